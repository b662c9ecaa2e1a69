"""One-time MariaDB/MySQL set-up that keeps the broker's own credential powerless.

Measured on MariaDB 10.11: ``CREATE USER`` alone is enough to change root's password, and
``SET DEFAULT ROLE ... FOR`` another account needs root-level rights. So the broker's
provisioner may only EXECUTE four ``SQL SECURITY DEFINER`` procedures; their definer is a
locked account (``dbaccess_owner@localhost``, no login possible) that holds the rights, and
each procedure validates its arguments first: the managed prefix, an allow-list of roles,
a bounded expiry, a password *hash* (never a password). Only accounts recorded in
``dbaccess.managed_users`` — created by these procedures — can be renewed or revoked.

MariaDB has no account expiry. ``init_connect`` calls ``login_check``, which refuses an
expired managed user at login whatever ``event_scheduler`` is (see _login_check); an EVENT
that runs every few seconds (when event_scheduler=ON) drops expired users on the server's
own clock, next to the broker's reaper; revoke_user serialises the two per account.

Names are compared byte-exactly (COLLATION); the routines keep the sql_mode, character set
and time zone the bootstrap sets first, whatever the caller's session has; revoke_user
drops (or, for "keep" templates, disarms) the routines, events, triggers and views the
session user made (see _session_objects).

Break-glass users must have every statement logged, and MariaDB has no per-user
``log_statement``. The closest equivalent is the ``server_audit`` plugin (shipped with
MariaDB): the bootstrap installs it, ``create_user(..., p_log)`` adds the user to
``server_audit_incl_users`` before the account exists (turning QUERY logging on when it is
off), and ``revoke_user`` takes it out again. Measured on 10.11:

- changing the plugin's globals needs SUPER: CONNECTION ADMIN, BINLOG ADMIN, REPLICATION
  MASTER ADMIN, FEDERATED ADMIN and READ_ONLY ADMIN are all refused, and 10.11 has no
  SYSTEM_VARIABLES_ADMIN. So the locked definer holds SUPER; only these validating
  procedures ever run as it;
- the include list is one global string of at most 1,023 characters (1,024 are cut to
  1,023 without an error, longer values are refused): about 30 break-glass users with
  32-character names at once. Beyond that the creation fails rather than run unlogged;
- an empty include list means "log everyone", so the list always keeps the placeholder
  name ``dbaccess-none``;
- a procedure that names a plugin variable directly cannot even be loaded once the plugin
  is uninstalled, so the procedures set them through prepared statements (creating users
  without logging keeps working; with logging it fails with a clear message);
- a query reaches ``server_audit.log`` (in the data directory by default) just after its
  result went to the client, cut to ``server_audit_query_log_limit`` bytes (1,024 by
  default; the bootstrap and every break-glass creation set it to its maximum,
  2,147,483,647, so a statement is cut only by max_allowed_packet, where the server
  refuses it anyway). Each statement of a multi-statement query, PREPARE/EXECUTE, EXECUTE
  IMMEDIATE, comments and the statements inside a called procedure are all logged; the
  variables that could hide them (sql_log_off, server_audit_*) need SUPER.

The plugin's settings, init_connect and event_scheduler live in memory only. After a
restart the plugin is loaded again (INSTALL SONAME is recorded in mysql.plugin) but logging
is off and the include list is empty: live break-glass users are no longer logged (the next
break-glass creation turns logging on again); and without init_connect an expired user can
log in until the reaper drops it. So put this in my.cnf (measured: the plugin lines take
effect with or without ``plugin_load_add``, which only makes loading independent of
mysql.plugin); the placeholder keeps the list from being empty, i.e. from logging everyone:

    [mariadb]
    init_connect = "CALL dbaccess.login_check()"
    event_scheduler = ON
    plugin_load_add = server_audit
    server_audit_logging = ON
    server_audit_events = QUERY
    server_audit_incl_users = dbaccess-none
    server_audit_query_log_limit = 2147483647
"""

from __future__ import annotations

from dbaccess.broker.engines.mariadb.masking import apply_masks
from dbaccess.broker.settings import TargetSection

SCHEMA = "dbaccess"
OWNER = "'dbaccess_owner'@'localhost'"
MAX_USERNAME = 32  # MySQL 8's limit; MariaDB allows 80
# renew_user's refusal past creation + max_lifetime, its own condition so that the engine
# tells it from a failure by number, not by message: SQLSTATE 45D01 (class 45, user-defined;
# what the mariadb client shows) and MYSQL_ERRNO 30001 (what every PyMySQL gives:
# exc.args[0]; exc.sqlstate only from PyMySQL 1.2). Measured on 10.11: MYSQL_ERRNO takes
# 1..65534, and PyMySQL reads it as a signed 16-bit number (65534 arrives as -2), so it stays
# below 32768, outside MariaDB's own (1000-4999) and the client's (2000-2999) numbers.
LIFETIME_SQLSTATE = "45D01"
LIFETIME_ERRNO = 30001
LIFETIME_REFUSAL = "beyond the maximum lifetime"  # in the message, for people
# \z, not $: in PCRE (REGEXP) $ also matches just before a trailing newline.
HASH_PATTERN = r"^\*[0-9A-F]{40}\z"
AUDIT_PLACEHOLDER = "dbaccess-none"  # keeps server_audit_incl_users from being empty
AUDIT_LIST_MAX = 1023  # measured: 1,024 characters are silently cut to 1,023
AUDIT_LOCK = "dbaccess.server_audit"  # serialises read-modify-write of the include list
AUDIT_LOCK_SECONDS = 10
# Measured on 10.11: the largest value server_audit_query_log_limit takes (larger ones are
# cut to it, the default is 1,024); statements up to max_allowed_packet are logged whole.
QUERY_LOG_LIMIT_MAX = 2147483647
REVOKE_LOCK_SECONDS = 30  # a second revocation of one account waits this long for the first
# Every login of an account without SUPER or CONNECTION ADMIN runs this first (see
# _login_check): an expired session user is refused before its first statement.
INIT_CONNECT = "CALL dbaccess.login_check()"
# Byte-exact names: case-sensitive, and a trailing space is part of the name (the server's
# default latin1_swedish_ci folds case and ignores trailing spaces; so do mysql.user's
# utf8_bin for spaces and information_schema's for case). The dbaccess database takes it
# as its default, so every procedure parameter and variable compares this way.
COLLATION = "utf8mb4_nopad_bin"
# The procedures keep the sql_mode they were created with, whatever the caller's: strict,
# so that an argument longer than its parameter is an error, never cut to another name.
SQL_MODE = (
    "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ZERO_DATE,NO_ZERO_IN_DATE,"
    "NO_ENGINE_SUBSTITUTION,NO_AUTO_CREATE_USER"
)
OBJECT_LOOP_MAX = 100000  # objects of one session user handled at revocation, at most


def _lit(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _q(expression: str) -> str:
    """SQL quoting, inside a procedure, the identifier that ``expression`` evaluates to."""
    return f"CONCAT('`', REPLACE({expression}, '`', '``'), '`')"


def _exec(expression: str) -> str:
    return (
        f"SET @dbaccess_sql = {expression}; PREPARE dbaccess_stmt FROM @dbaccess_sql; "
        "EXECUTE dbaccess_stmt; DEALLOCATE PREPARE dbaccess_stmt;"
    )


def _exact(column: str) -> str:
    """``column`` compared byte-exactly, whatever its own collation."""
    return f"CONVERT({column} USING utf8mb4) COLLATE {COLLATION}"


def kept_groups(target: TargetSection) -> list[str]:
    """Group roles whose session users' objects are kept at revocation. A group shared by
    templates that disagree counts as "drop", the safer answer."""
    modes: dict[str, set[str]] = {}
    for role in target.roles.values():
        modes.setdefault(role.group_role, set()).add(role.session_objects)
    return sorted(group for group, seen in modes.items() if seen == {"keep"})


def bootstrap_sql(target: TargetSection) -> list[str]:
    """Statements to run, in order, as an administrator (e.g. root)."""
    prefix = target.username_prefix
    room = MAX_USERNAME - len(prefix)
    name_pattern = "^" + prefix + "[a-z0-9_]{1," + str(room) + "}\\z"
    max_seconds = int(target.max_lifetime.total_seconds())
    groups = sorted({role.group_role for role in target.roles.values()})
    allowed = ", ".join(_lit(g) for g in groups)
    keep = ", ".join(_lit(g) for g in kept_groups(target)) or "NULL"
    provisioner = f"{_lit(target.provisioner.user)}@'%'"
    account = "CONCAT(QUOTE(p_user), '@''%''')"
    like_prefix = _lit(prefix.replace("_", "\\_") + "%")  # LIKE treats _ as a wildcard
    validate_name = (
        # BINARY: REGEXP folds case otherwise, and [a-z] would let DBA_X through
        f"IF p_user IS NULL OR p_user NOT REGEXP BINARY {_lit(name_pattern)} THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: not a managed user name'; END IF;"
    )
    validate_expiry = (
        "IF p_expires IS NULL OR p_expires <= UTC_TIMESTAMP() "
        f"OR p_expires > UTC_TIMESTAMP() + INTERVAL {max_seconds} SECOND THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: expiry is out of bounds'; END IF;"
    )
    managed_only = (
        f"IF NOT EXISTS (SELECT 1 FROM {SCHEMA}.managed_users WHERE username = p_user) THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: not created by dbaccess'; END IF;"
    )
    user_exists = f"EXISTS (SELECT 1 FROM mysql.user WHERE {_exact('user')} = p_user)"
    statements = [
        # Stored with every routine, event and table made below, whatever the admin's
        # session had: the procedures then run the same for every caller.
        f"SET SESSION sql_mode = {_lit(SQL_MODE)}",
        f"SET NAMES utf8mb4 COLLATE {COLLATION}",
        "SET SESSION time_zone = '+00:00'",
        f"CREATE DATABASE IF NOT EXISTS {SCHEMA} CHARACTER SET utf8mb4 COLLATE {COLLATION}",
        f"ALTER DATABASE {SCHEMA} CHARACTER SET utf8mb4 COLLATE {COLLATION}",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.managed_users ("
        f" username VARCHAR(80) CHARACTER SET utf8mb4 COLLATE {COLLATION} NOT NULL PRIMARY KEY,"
        " created_at DATETIME NOT NULL DEFAULT UTC_TIMESTAMP(),"
        " expires_at DATETIME NOT NULL)",
        # An earlier bootstrap left the server's default, case-insensitive collation.
        f"ALTER TABLE {SCHEMA}.managed_users MODIFY username"
        f" VARCHAR(80) CHARACTER SET utf8mb4 COLLATE {COLLATION} NOT NULL",
        # The template's group role: it decides what happens to the user's objects.
        f"ALTER TABLE {SCHEMA}.managed_users ADD COLUMN IF NOT EXISTS group_role"
        f" VARCHAR(80) CHARACTER SET utf8mb4 COLLATE {COLLATION} NULL",
        f"CREATE USER IF NOT EXISTS {OWNER} ACCOUNT LOCK",
        f"ALTER USER {OWNER} ACCOUNT LOCK",
        # CREATE USER + CONNECTION ADMIN/PROCESS to see and kill sessions (without them
        # KILL fails silently); UPDATE on mysql for SET DEFAULT ROLE ... FOR.
        f"GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO {OWNER}",
        f"GRANT SELECT, UPDATE ON mysql.* TO {OWNER}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE, EVENT, EXECUTE ON {SCHEMA}.* TO {OWNER}",
        # To find and drop (or re-define) the routines, events, triggers and views of a
        # session user in any database (see _session_objects).
        "GRANT SELECT, DROP, CREATE VIEW, SHOW VIEW, ALTER ROUTINE, EVENT, TRIGGER ON *.* "
        f"TO {OWNER}",
        # Statement logging for break-glass users (see the module docstring).
        "BEGIN NOT ATOMIC IF NOT EXISTS (SELECT 1 FROM information_schema.PLUGINS "
        "WHERE PLUGIN_NAME = 'SERVER_AUDIT') THEN INSTALL SONAME 'server_audit'; END IF; END",
        f"GRANT SUPER ON *.* TO {OWNER}",
        # Long statements are logged whole (the default cuts them at 1,024 bytes).
        f"SET GLOBAL server_audit_query_log_limit = {QUERY_LOG_LIMIT_MAX}",
    ]
    for group in groups:
        statements += [
            f"CREATE ROLE IF NOT EXISTS {_ident(group)}",
            f"GRANT {_ident(group)} TO {OWNER} WITH ADMIN OPTION",
        ]
    statements += _audit_procedures(validate_name)
    statements += _session_objects()
    statements += _login_check()
    statements += [
        f"CREATE USER IF NOT EXISTS {provisioner}",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.create_user(
    IN p_user VARCHAR(80), IN p_hash VARCHAR(41), IN p_role VARCHAR(80),
    IN p_expires DATETIME, IN p_connections INT, IN p_statement_seconds DOUBLE,
    IN p_log BOOLEAN)
SQL SECURITY DEFINER
BEGIN
    {validate_name}
    IF p_role IS NULL OR p_role NOT IN ({allowed}) THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: not an allowed role';
    END IF;
    IF p_hash IS NULL OR p_hash NOT REGEXP BINARY {_lit(HASH_PATTERN)} THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: a password hash is required';
    END IF;
    {validate_expiry}
    IF p_connections IS NULL OR p_connections NOT BETWEEN 1 AND 100 THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: connection limit out of range';
    END IF;
    IF p_statement_seconds IS NOT NULL AND p_statement_seconds NOT BETWEEN 0 AND 86400 THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: statement time out of range';
    END IF;
    -- DDL commits on its own here, so check first: registering an existing account
    -- would let revoke_user drop an account dbaccess did not create.
    IF {user_exists} THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: the account already exists';
    END IF;
    IF p_log THEN
        -- Before the account exists: a user that cannot be logged is not created.
        CALL {SCHEMA}.audit_include(p_user);
    END IF;
    INSERT INTO {SCHEMA}.managed_users (username, created_at, expires_at, group_role)
        VALUES (p_user, UTC_TIMESTAMP(), p_expires, p_role);
    {
            _exec(
                f"CONCAT('CREATE USER ', {account}, ' IDENTIFIED BY PASSWORD ', QUOTE(p_hash), "
                "' WITH MAX_USER_CONNECTIONS ', p_connections, "
                "IF(p_statement_seconds IS NULL, '', "
                "CONCAT(' MAX_STATEMENT_TIME ', p_statement_seconds)))"
            )
        }
    {_exec(f"CONCAT('GRANT `', p_role, '` TO ', {account})")}
    {_exec(f"CONCAT('SET DEFAULT ROLE `', p_role, '` FOR ', {account})")}
END""",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.renew_user(
    IN p_user VARCHAR(80), IN p_expires DATETIME)
SQL SECURITY DEFINER
BEGIN
    {managed_only}
    {validate_expiry}
    -- However often it is renewed, a user lives at most max_lifetime from its creation.
    IF p_expires > (SELECT created_at FROM {SCHEMA}.managed_users WHERE username = p_user)
            + INTERVAL {max_seconds} SECOND THEN
        SIGNAL SQLSTATE '{LIFETIME_SQLSTATE}' SET MYSQL_ERRNO = {LIFETIME_ERRNO}, MESSAGE_TEXT =
            'dbaccess: {LIFETIME_REFUSAL} of this user (max_lifetime from its creation)';
    END IF;
    UPDATE {SCHEMA}.managed_users SET expires_at = p_expires WHERE username = p_user;
END""",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.revoke_user(
    IN p_user VARCHAR(80), OUT p_remaining INT)
SQL SECURITY DEFINER
BEGIN
    DECLARE v_id BIGINT;
    DECLARE v_tries INT DEFAULT 0;
    DECLARE v_role VARCHAR(80);
    -- One revocation of an account at a time (the broker's reaper and the server's expiry
    -- event may both get to it): the second waits, then finds it gone, which is success.
    -- Hashed: lock names have at most 64 characters.
    DECLARE v_lock VARCHAR(64) DEFAULT CONCAT('dbaccess.revoke.', SHA1(p_user));
    DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN DO RELEASE_LOCK(v_lock); RESIGNAL; END;
    SET p_remaining = 0;
    IF p_user IS NULL THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: not a managed user name';
    END IF;
    IF GET_LOCK(v_lock, {REVOKE_LOCK_SECONDS}) IS NOT TRUE THEN
        SIGNAL SQLSTATE '45000'
            SET MESSAGE_TEXT = 'dbaccess: another revocation of this user is still running';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM {SCHEMA}.managed_users WHERE username = p_user) THEN
        IF {user_exists} THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: not created by dbaccess';
        END IF;
    ELSE
        SELECT group_role INTO v_role FROM {SCHEMA}.managed_users WHERE username = p_user;
        IF EXISTS (SELECT 1 FROM mysql.user WHERE {_exact("user")} = p_user AND host = '%') THEN
            -- Lock first: DROP USER alone would leave live sessions working.
            {_exec(f"CONCAT('ALTER USER ', {account}, ' ACCOUNT LOCK')")}
            kill_loop: LOOP
                SELECT MIN(ID) INTO v_id FROM information_schema.PROCESSLIST
                    WHERE {_exact("USER")} = p_user AND ID <> CONNECTION_ID();
                IF v_id IS NULL THEN LEAVE kill_loop; END IF;
                SET v_tries = v_tries + 1;
                IF v_tries > 500 THEN
                    SELECT COUNT(*) INTO p_remaining FROM information_schema.PROCESSLIST
                        WHERE {_exact("USER")} = p_user;
                    LEAVE kill_loop;
                END IF;
                BEGIN
                    DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;  -- already gone
                    {_exec("CONCAT('KILL CONNECTION ', v_id)")}
                END;
                DO SLEEP(0.01);
            END LOOP;
        END IF;
        IF p_remaining = 0 THEN
            -- Its routines, events, triggers and views go before the account: they would
            -- outlive it, and come back to life with a later account of the same name.
            CALL {SCHEMA}.session_objects(p_user, v_role,
                                          IF(v_role IN ({keep}), v_role, NULL));
            {_exec(f"CONCAT('DROP USER IF EXISTS ', {account})")}
            -- A break-glass user leaves the statement-logging list with its account; before
            -- the record goes, so that a failure here is retried by the next revoke.
            CALL {SCHEMA}.audit_exclude(p_user);
            DELETE FROM {SCHEMA}.managed_users WHERE username = p_user;
        END IF;
    END IF;
    DO RELEASE_LOCK(v_lock);
END""",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.managed_users()
SQL SECURITY DEFINER
BEGIN
    SELECT username FROM {SCHEMA}.managed_users
    UNION
    SELECT {_exact("user")} FROM mysql.user WHERE user LIKE {like_prefix}
        AND is_role = 'N';
END""",
        _inventory(like_prefix),
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.expire_due()
SQL SECURITY DEFINER
BEGIN
    -- Each user due now once, in (expires_at, username) order: one whose revocation fails
    -- is passed over (the next run and the broker's reaper retry it), never retried in a
    -- loop, and never holds up the users after it.
    DECLARE v_user, v_next VARCHAR(80) DEFAULT '';
    DECLARE v_expires, v_next_expires DATETIME DEFAULT '1000-01-01 00:00:00';
    DECLARE v_remaining INT;
    DECLARE v_now DATETIME DEFAULT UTC_TIMESTAMP();
    expire_loop: LOOP
        SET v_next = NULL;
        SELECT username, expires_at INTO v_next, v_next_expires FROM {SCHEMA}.managed_users
            WHERE expires_at <= v_now
              AND (expires_at > v_expires OR (expires_at = v_expires AND username > v_user))
            ORDER BY expires_at, username LIMIT 1;
        IF v_next IS NULL THEN LEAVE expire_loop; END IF;
        SET v_user = v_next, v_expires = v_next_expires;
        BEGIN
            DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;
            CALL {SCHEMA}.revoke_user(v_user, v_remaining);
        END;
    END LOOP;
END""",
        # The server's own clock: runs when event_scheduler=ON, harmless otherwise.
        f"CREATE OR REPLACE DEFINER = {OWNER} EVENT {SCHEMA}.expire_due "
        f"ON SCHEDULE EVERY 2 SECOND DO CALL {SCHEMA}.expire_due()",
    ]
    for procedure in ("create_user", "renew_user", "revoke_user", "managed_users", "inventory"):
        statements.append(f"GRANT EXECUTE ON PROCEDURE {SCHEMA}.{procedure} TO {provisioner}")
    statements += _group_role_objects(groups, provisioner)
    # Shown to whoever runs the printed SQL (apply() says it too).
    statements.append(
        f"SELECT IF(@@GLOBAL.event_scheduler = 'ON', 'event_scheduler is ON', "
        f"{_lit(EVENT_SCHEDULER_OFF)}) AS dbaccess_note"
    )
    return statements


EVENT_SCHEDULER_OFF = (
    "warning: event_scheduler is OFF, so the expiry event does not run: only the broker's "
    "reaper drops expired users (init_connect still refuses their logins); set "
    "event_scheduler = ON, and put it in my.cnf with the lines in docs/broker.md"
)


def _inventory(like_prefix: str) -> str:
    """Every account and role of the server, one row each: its global powers, the roles
    granted to it directly (the broker follows roles of roles), when its password expires
    (NULL: never), and whether dbaccess made it; then how many routines and events each
    DEFINER has. The definer reads mysql.* for the provisioner, which cannot."""
    # days; -1 (or none) in the account: the server's default_password_lifetime
    lifetime = (
        "COALESCE(NULLIF(CAST(JSON_VALUE(g.Priv, '$.password_lifetime') AS SIGNED), -1), "
        "@@GLOBAL.default_password_lifetime)"
    )
    return f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.inventory()
SQL SECURITY DEFINER
BEGIN
    SELECT {_exact("u.User")} AS username, {_exact("u.Host")} AS host, u.is_role,
           u.Super_priv = 'Y' AS super,
           (u.Select_priv = 'Y' AND u.Insert_priv = 'Y' AND u.Update_priv = 'Y'
            AND u.Delete_priv = 'Y' AND u.Create_priv = 'Y' AND u.Drop_priv = 'Y'
            AND u.Alter_priv = 'Y') AS all_privileges,
           u.Grant_priv = 'Y' AS grant_option,
           u.Create_user_priv = 'Y' AS create_user,
           u.File_priv = 'Y' AS file,
           (SELECT GROUP_CONCAT({_exact("m.Role")} ORDER BY m.Role SEPARATOR '\n')
              FROM mysql.roles_mapping m
             WHERE m.User = u.User AND m.Host = IF(u.is_role = 'Y', '', u.Host)) AS roles,
           CASE WHEN u.is_role = 'Y' THEN NULL
                WHEN u.password_expired = 'Y' THEN '1970-01-01 00:00:00'
                WHEN {lifetime} = 0 THEN NULL
                -- from epoch seconds by arithmetic: FROM_UNIXTIME would read the
                -- caller's time_zone, which a procedure does not pin
                ELSE DATE_FORMAT(DATE_ADD(DATE_ADD('1970-01-01 00:00:00', INTERVAL
                     CAST(JSON_VALUE(g.Priv, '$.password_last_changed') AS SIGNED) SECOND),
                     INTERVAL {lifetime} DAY), '%Y-%m-%d %H:%i:%s') END AS password_expires,
           (u.User LIKE {like_prefix}
            OR u.User IN (SELECT username FROM {SCHEMA}.managed_users)) AS managed
      FROM mysql.user u
      LEFT JOIN mysql.global_priv g ON g.User = u.User AND g.Host = u.Host
     ORDER BY {_exact("u.User")}, {_exact("u.Host")};
    -- and, as a second result, the definers: counted per account (mysql.proc has no
    -- index on definer), the two took 2.7 s for 10,000 accounts; grouped once, 0.01 s
    SELECT {_exact("d.definer")} AS definer, COUNT(*) AS n
      FROM (SELECT definer FROM mysql.proc UNION ALL SELECT definer FROM mysql.event) d
     GROUP BY d.definer;
END"""


def _login_check() -> list[str]:
    """MariaDB has no account expiry. ``init_connect`` runs before the first statement of
    every login without SUPER or CONNECTION ADMIN (session users have neither). Measured
    on 10.11: when it fails, the server drops the connection ("init_connect command
    failed"), so an expired session user cannot log in, not even for one statement,
    whatever event_scheduler says and however long the broker is away. Every account
    runs it, so EXECUTE goes to PUBLIC (it only reads), and it must stay simple."""
    # USER() is what the client logged in as, user@client-host; the user is what comes
    # before the last @ (a host has none).
    user = (
        "SUBSTRING(USER(), 1, CHAR_LENGTH(USER()) "
        "- CHAR_LENGTH(SUBSTRING_INDEX(USER(), '@', -1)) - 1)"
    )
    ours = _lit(INIT_CONNECT)
    busy = (
        "dbaccess: init_connect is already set; add "
        + INIT_CONNECT
        + " to it (statements separated by ;), then run the bootstrap again"
    )
    return [
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.login_check()
SQL SECURITY DEFINER
BEGIN
    IF EXISTS (SELECT 1 FROM {SCHEMA}.managed_users
               WHERE username = {_exact(user)} AND expires_at <= UTC_TIMESTAMP()) THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: this session user has expired';
    END IF;
END""",
        f"GRANT EXECUTE ON PROCEDURE {SCHEMA}.login_check TO PUBLIC",
        # An administrator's own init_connect is not overwritten: the bootstrap stops and
        # says how to combine the two.
        "BEGIN NOT ATOMIC IF @@GLOBAL.init_connect NOT IN ('', " + ours + ") AND "
        f"LOCATE({ours}, @@GLOBAL.init_connect) = 0 THEN SIGNAL SQLSTATE '45000' "
        f"SET MESSAGE_TEXT = {_lit(busy)}; ELSEIF @@GLOBAL.init_connect = '' THEN "
        f"SET GLOBAL init_connect = {ours}; END IF; END",
    ]


def _made_by_session(column: str) -> str:
    """Whether DEFINER ``column`` is one a session user ``p_user`` could have written: its
    own account, or by name, with any host or none, a role granted to it (only its group
    role) or its recorded group role ``p_group``, in case the account is gone already.
    (mysql.proc writes a role as 'role', the others as 'role@'.)"""
    return (
        f"({_exact(column)} = CONCAT(p_user, '@%') OR {_names_role(column, 'p_group')}"
        " OR EXISTS (SELECT 1 FROM mysql.roles_mapping m"
        f" WHERE {_exact('m.User')} = p_user AND m.Host = '%' AND m.Role <> ''"
        f" AND {_names_role(column, _exact('m.Role'))}))"
    )


def _names_role(column: str, role: str) -> str:
    """Whether DEFINER ``column``'s name is ``role`` (an expression), any host or none."""
    definer = _exact(column)
    return f"({definer} = {role} OR LEFT({definer}, CHAR_LENGTH({role}) + 1) = CONCAT({role}, '@'))"


def _group_role_objects(groups: list[str], provisioner: str) -> list[str]:
    """``group_role_objects()``: how many routines, events, triggers and views each group
    role is the DEFINER of (by name, any host). check-config warns about a "drop"
    template's: revocation drops them, whoever made them. Counts only, for the
    provisioner (it cannot read mysql.proc); reads information_schema (tens of ms)."""
    roles = " UNION ALL ".join(f"SELECT {_lit(g)} AS role" for g in groups)
    counts = " + ".join(
        f"(SELECT COUNT(*) FROM {table} WHERE {_names_role(column, 'r.role')})"
        for table, column in (
            ("mysql.proc", "definer"),
            ("mysql.event", "definer"),
            ("information_schema.TRIGGERS", "DEFINER"),
            ("information_schema.VIEWS", "DEFINER"),
        )
    )
    return [
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.group_role_objects()
SQL SECURITY DEFINER
BEGIN
    SELECT r.role, {counts} FROM ({roles}) r;
END""",
        f"GRANT EXECUTE ON PROCEDURE {SCHEMA}.group_role_objects TO {provisioner}",
    ]


def _session_objects() -> list[str]:
    """``session_objects(user, group_role, keep_role)``: what revocation does with the
    routines, events, triggers and views a session user can make, in every database: those
    whose DEFINER is the session account, or a role granted to it (its group role; the
    recorded one too, should the account be gone already).

    Measured on 10.11: a session user cannot give an object another account as DEFINER
    (that needs SUPER or SET USER; dbaccess_owner, root, a role granted to its group role
    and PUBLIC are refused). But it may name the role it has on: ``DEFINER = CURRENT_ROLE``,
    the role by name, and even ``'<role>'@'<any host>'`` (the server compares only the
    name with the current role). Such objects run with the template's rights (or fail, for
    a host: no such account) and nothing else ties them to the session. Its own objects
    outlive DROP USER with its name as DEFINER: they then fail ("the user specified as a
    definer does not exist"; a trigger so fails every write to its table) and would come
    back to life with a later account of the same name. So:

    - keep_role NULL ("drop", the default): both kinds are dropped, so a "drop"
      template's group role owns nothing for long: what another live session of the
      template made as the role goes too (it was to go at that session's end anyway; the
      session still has its rights and can make it again), and so does an object an
      administrator defined as the role (docs/broker.md; check-config warns);
    - keep_role = the template's group role ("keep", for migrations): routines become
      SQL SECURITY INVOKER (they run with the rights of whoever calls them); views become
      SQL SECURITY INVOKER with the group role as DEFINER; triggers and events, which
      always run as their DEFINER, get the group role: a role cannot log in and has the
      template's rights, never more (never dbaccess_owner's). Objects already in that
      state are left alone. A locked account holding the role would not do: a definer's
      default role is not turned on when its objects run (measured), so kept triggers
      would fail every write.

    Packages (sql_mode=ORACLE) are dropped in both modes: they have no ALTER. Errors are
    not caught: the revocation fails and is retried; the account is locked and its
    sessions are gone by then."""
    mine = _made_by_session("definer")
    mine_is = _made_by_session("DEFINER")
    # Already as "keep" leaves it: the group role ('role' in mysql.proc, 'role@' elsewhere)
    kept_as_role = f"{_exact('definer')} IN (p_keep, CONCAT(p_keep, '@'))"
    kept_as_role_is = f"{_exact('DEFINER')} IN (p_keep, CONCAT(p_keep, '@'))"
    role = _q("p_keep")
    name = f"{_q('v_db')}, '.', {_q('v_name')}"
    bounded = (
        f"SET v_n = v_n + 1; IF v_n > {OBJECT_LOOP_MAX} THEN SIGNAL SQLSTATE '45000' "
        "SET MESSAGE_TEXT = 'dbaccess: too many objects to revoke'; END IF;"
    )
    alter_view = (
        "CONCAT('ALTER ALGORITHM = ', v_algorithm, ' DEFINER = ', "
        + role
        + ", ' SQL SECURITY INVOKER VIEW ', "
        + name
        + ", ' AS ', v_body, "
        "IF(v_check = 'NONE', '', CONCAT(' WITH ', v_check, ' CHECK OPTION')))"
    )
    alter_event = (
        f"CONCAT('ALTER DEFINER = ', {role}, ' EVENT ', {name}, ' COMMENT ', QUOTE(v_comment))"
    )
    create_trigger = (
        "CONCAT('CREATE OR REPLACE DEFINER = ', "
        + role
        + ", ' TRIGGER ', "
        + name
        + ", ' ', v_timing, ' ', v_event, ' ON ', "
        + _q("v_db")
        + ", '.', "
        + _q("v_table")
        + ", ' FOR EACH ROW ', v_body)"
    )
    return [
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.session_objects(
    IN p_user VARCHAR(80), IN p_group VARCHAR(80), IN p_keep VARCHAR(80))
SQL SECURITY DEFINER
BEGIN
    DECLARE v_db, v_name, v_type, v_table, v_timing, v_event, v_algorithm, v_check
        VARCHAR(200);
    DECLARE v_comment, v_body, v_mode LONGTEXT;
    DECLARE v_n INT DEFAULT 0;
    DECLARE v_triggers, v_views BOOLEAN DEFAULT TRUE;
    -- information_schema.TRIGGERS and VIEWS open every table and view of the server (tens
    -- of ms with a few hundred; measured), so they are searched only when the account, a
    -- role it has (through any chain of roles) or PUBLIC holds TRIGGER or CREATE VIEW
    -- somewhere, at any level. Names are joined loosely (any host): more searches, never
    -- fewer.
    WITH RECURSIVE holders(name) AS (
        SELECT p_user UNION SELECT 'PUBLIC' UNION SELECT p_group
        UNION SELECT m.Role FROM mysql.roles_mapping m JOIN holders h ON m.User = h.name
    )
    SELECT EXISTS (SELECT 1 FROM mysql.user u JOIN holders h ON u.User = h.name
                   WHERE u.Trigger_priv = 'Y')
        OR EXISTS (SELECT 1 FROM mysql.db d JOIN holders h ON d.User = h.name
                   WHERE d.Trigger_priv = 'Y')
        OR EXISTS (SELECT 1 FROM mysql.tables_priv t JOIN holders h ON t.User = h.name
                   WHERE FIND_IN_SET('Trigger', t.Table_priv) > 0),
           EXISTS (SELECT 1 FROM mysql.user u JOIN holders h ON u.User = h.name
                   WHERE u.Create_view_priv = 'Y')
        OR EXISTS (SELECT 1 FROM mysql.db d JOIN holders h ON d.User = h.name
                   WHERE d.Create_view_priv = 'Y')
        OR EXISTS (SELECT 1 FROM mysql.tables_priv t JOIN holders h ON t.User = h.name
                   WHERE FIND_IN_SET('Create View', t.Table_priv) > 0)
        INTO v_triggers, v_views;
    -- Routines from mysql.proc and events from mysql.event (cheap): information_schema
    -- shows only what the reader has rights on.
    routines: LOOP
        SET v_name = NULL;
        SELECT db, name, type INTO v_db, v_name, v_type FROM mysql.proc
            WHERE {mine} AND (p_keep IS NULL OR type LIKE 'PACKAGE%'
                              OR security_type = 'DEFINER')
            ORDER BY type DESC LIMIT 1;  -- a PACKAGE BODY before its PACKAGE
        IF v_name IS NULL THEN LEAVE routines; END IF;
        {bounded}
        IF p_keep IS NULL OR v_type LIKE 'PACKAGE%' THEN
            {_exec(f"CONCAT('DROP ', v_type, ' IF EXISTS ', {name})")}
        ELSE
            {_exec(f"CONCAT('ALTER ', v_type, ' ', {name}, ' SQL SECURITY INVOKER')")}
        END IF;
    END LOOP;
    events: LOOP
        SET v_name = NULL;
        SELECT db, name, comment INTO v_db, v_name, v_comment FROM mysql.event
            WHERE {mine} AND (p_keep IS NULL OR NOT {kept_as_role}) LIMIT 1;
        IF v_name IS NULL THEN LEAVE events; END IF;
        {bounded}
        IF p_keep IS NULL THEN
            {_exec(f"CONCAT('DROP EVENT IF EXISTS ', {name})")}
        ELSE
            {_exec(alter_event)}
        END IF;
    END LOOP;
    triggers: LOOP
        IF NOT v_triggers THEN LEAVE triggers; END IF;
        SET v_name = NULL;
        SELECT TRIGGER_SCHEMA, TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING,
               EVENT_MANIPULATION, ACTION_STATEMENT, SQL_MODE
            INTO v_db, v_name, v_table, v_timing, v_event, v_body, v_mode
            FROM information_schema.TRIGGERS
            WHERE {mine_is} AND (p_keep IS NULL OR NOT {kept_as_role_is}) LIMIT 1;
        IF v_name IS NULL THEN LEAVE triggers; END IF;
        {bounded}
        IF p_keep IS NULL THEN
            {_exec(f"CONCAT('DROP TRIGGER IF EXISTS ', {name})")}
        ELSE
            SET SESSION sql_mode = v_mode;  -- the trigger's own; restored when this returns
            {_exec(create_trigger)}
        END IF;
    END LOOP;
    views: LOOP
        IF NOT v_views THEN LEAVE views; END IF;
        SET v_name = NULL;
        SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION, ALGORITHM, CHECK_OPTION
            INTO v_db, v_name, v_body, v_algorithm, v_check
            FROM information_schema.VIEWS
            WHERE {mine_is} AND (p_keep IS NULL OR SECURITY_TYPE = 'DEFINER'
                                 OR NOT {kept_as_role_is}) LIMIT 1;
        IF v_name IS NULL THEN LEAVE views; END IF;
        {bounded}
        IF p_keep IS NULL THEN
            {_exec(f"CONCAT('DROP VIEW IF EXISTS ', {name})")}
        ELSE
            {_exec(alter_view)}
        END IF;
    END LOOP;
END"""
    ]


def _audit_variable(name: str) -> str:
    """The plugin variable's value, or NULL when the plugin is not loaded."""
    return (
        "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES "
        f"WHERE VARIABLE_NAME = {_lit(name.upper())})"
    )


def _set_audit_variable(name: str, expression: str) -> str:
    # A prepared statement: naming the variable in the body would stop the procedure from
    # loading at all once the plugin is uninstalled (measured), breaking every create_user.
    return _exec(f"CONCAT('SET GLOBAL {name} = ', QUOTE({expression}))")


def _audit_procedures(validate_name: str) -> list[str]:
    """Procedures that add a user to, or take it out of, ``server_audit_incl_users``.

    Only the definer may run them (create_user and revoke_user call them). A named lock
    serialises the read-modify-write: two break-glass creations at once would otherwise
    each write the list they read, and one user would silently not be logged."""
    placeholder = _lit(AUDIT_PLACEHOLDER)
    locked = (
        "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN "
        f"DO RELEASE_LOCK({_lit(AUDIT_LOCK)}); RESIGNAL; END;\n"
        f"    IF GET_LOCK({_lit(AUDIT_LOCK)}, {AUDIT_LOCK_SECONDS}) IS NOT TRUE THEN "
        "SIGNAL SQLSTATE '45000' "
        "SET MESSAGE_TEXT = 'dbaccess: the statement-logging list is busy'; END IF;"
    )
    include = f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.audit_include(
    IN p_user VARCHAR(80))
SQL SECURITY DEFINER
BEGIN
    DECLARE v_list, v_events, v_logging TEXT;
    {locked}
    {validate_name}  -- the callers checked it too; a comma would corrupt the list
    SET v_list = {_audit_variable("server_audit_incl_users")},
        v_events = {_audit_variable("server_audit_events")},
        v_logging = {_audit_variable("server_audit_logging")};
    IF v_list IS NULL THEN
        SIGNAL SQLSTATE '45000'
            SET MESSAGE_TEXT = 'dbaccess: statement logging needs the server_audit plugin';
    END IF;
    -- Logging on with an empty list logs everyone already. Otherwise the user joins the
    -- list, and the placeholder keeps it from ever being empty (which would log everyone).
    IF NOT (v_logging = 'ON' AND v_list = '') AND FIND_IN_SET(p_user, v_list) = 0 THEN
        SET v_list = CONCAT(IF(v_list = '', {placeholder}, v_list), ',', p_user);
        IF LENGTH(v_list) > {AUDIT_LIST_MAX} THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
                'dbaccess: server_audit_incl_users is full (too many break-glass users)';
        END IF;
        {_set_audit_variable("server_audit_incl_users", "v_list")}
    END IF;
    -- Queries must be among the logged events ('' means every event, QUERY included).
    IF v_events <> '' AND FIND_IN_SET('QUERY', v_events) = 0 THEN
        {_set_audit_variable("server_audit_events", "CONCAT(v_events, ',QUERY')")}
    ELSEIF v_events = '' AND v_logging = 'OFF' THEN
        {_set_audit_variable("server_audit_events", "'QUERY'")}
    END IF;
    -- Long statements whole: the default cuts them at 1,024 bytes. Set here too, for a
    -- server restarted without the my.cnf line.
    IF {_audit_variable("server_audit_query_log_limit")} < {QUERY_LOG_LIMIT_MAX} THEN
        {_exec(f"'SET GLOBAL server_audit_query_log_limit = {QUERY_LOG_LIMIT_MAX}'")}
    END IF;
    IF v_logging = 'OFF' THEN
        {_set_audit_variable("server_audit_logging", "'ON'")}
    END IF;
    DO RELEASE_LOCK({_lit(AUDIT_LOCK)});
END"""
    # Rebuilt from the names that are not p_user, compared byte-exactly: a bounded loop
    # over the list's items (a WHILE on FIND_IN_SET could spin forever where FIND_IN_SET
    # and REPLACE disagree, e.g. on case).
    exclude = f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.audit_exclude(
    IN p_user VARCHAR(80))
SQL SECURITY DEFINER
audit_exclude: BEGIN
    DECLARE v_list, v_kept, v_item TEXT;
    DECLARE v_i, v_count INT DEFAULT 0;
    -- Not listed (most users): nothing to do, and no wait for the lock. Only this user's
    -- own revocation takes it off, so it cannot join the list meanwhile.
    IF COALESCE(FIND_IN_SET(p_user, {_audit_variable("server_audit_incl_users")}), 0) = 0 THEN
        LEAVE audit_exclude;
    END IF;
    BEGIN
    {locked}
    SET v_list = {_audit_variable("server_audit_incl_users")};
    IF v_list IS NOT NULL AND FIND_IN_SET(p_user, v_list) > 0 THEN
        SET v_count = 1 + CHAR_LENGTH(v_list) - CHAR_LENGTH(REPLACE(v_list, ',', '')),
            v_kept = '';
        WHILE v_i < v_count DO
            SET v_i = v_i + 1,
                v_item = SUBSTRING_INDEX(SUBSTRING_INDEX(v_list, ',', v_i), ',', -1);
            IF v_item <> p_user AND v_item <> '' THEN
                SET v_kept = IF(v_kept = '', v_item, CONCAT(v_kept, ',', v_item));
            END IF;
        END WHILE;
        {_set_audit_variable("server_audit_incl_users", f"IF(v_kept = '', {placeholder}, v_kept)")}
    END IF;
    DO RELEASE_LOCK({_lit(AUDIT_LOCK)});
    END;
END"""
    return [include, exclude]


def render(target_name: str, target: TargetSection) -> str:
    head = (
        f"-- dbaccess bootstrap for MariaDB target '{target_name}'.\n"
        "-- Run once as an administrator (e.g. mariadb -u root < this-file). Then give the\n"
        f"-- provisioner a password: ALTER USER '{target.provisioner.user}'@'%' IDENTIFIED BY"
        " ...;\n-- (or use: dbaccess-broker bootstrap " + target_name + " --apply).\n"
        "DELIMITER //\n"
    )
    if any(role.masked for role in target.roles.values()):
        # the patterns are matched against the server's tables when applied (masking.py)
        head += "-- Masked columns are applied by --apply only (dbaccess-broker bootstrap).\n"
    return head + "".join(f"\n{s}//\n" for s in bootstrap_sql(target)) + "\nDELIMITER ;\n"


def native_password_hash(password: str) -> str:
    """MariaDB's mysql_native_password hash: ``*`` + upper hex of SHA1(SHA1(password))."""
    import hashlib

    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def apply(target: TargetSection, admin: object, provisioner_password: str) -> None:
    """Run the bootstrap through ``admin`` (a PyMySQL connection with root-level rights)
    and give the provisioner its password, sent only as a hash."""
    import pymysql

    assert isinstance(admin, pymysql.connections.Connection)
    with admin.cursor() as cur:
        for statement in bootstrap_sql(target):
            cur.execute(statement)
        apply_masks(target, cur)  # after the group roles exist
        cur.execute(
            "ALTER USER %s@'%%' IDENTIFIED BY PASSWORD %s",
            (target.provisioner.user, native_password_hash(provisioner_password)),
        )


def warnings(admin: object) -> list[str]:
    """What the administrator should know after apply(): settings the bootstrap does not
    change itself (event_scheduler is the server's choice; it is off by default)."""
    import pymysql

    assert isinstance(admin, pymysql.connections.Connection)
    with admin.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.event_scheduler")
        row = cur.fetchone()
    return [] if row and str(row[0]).upper() == "ON" else [EVENT_SCHEDULER_OFF]
