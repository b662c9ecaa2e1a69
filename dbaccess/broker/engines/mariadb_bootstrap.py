"""One-time MariaDB/MySQL set-up that keeps the broker's own credential powerless.

Measured on MariaDB 10.11: ``CREATE USER`` alone is enough to change root's password, and
``SET DEFAULT ROLE ... FOR`` another account needs root-level rights. So the broker's
provisioner may only EXECUTE four ``SQL SECURITY DEFINER`` procedures; their definer is a
locked account (``dbaccess_owner@localhost``, no login possible) that holds the rights, and
each procedure validates its arguments first: the managed prefix, an allow-list of roles,
a bounded expiry, a password *hash* (never a password). Only accounts recorded in
``dbaccess.managed_users`` — created by these procedures — can be renewed or revoked.

MariaDB has no account expiry, so ``managed_users.expires_at`` plus an EVENT that runs
every few seconds is the server's own clock, a second one next to the broker's reaper.

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
  result went to the client, cut to ``server_audit_query_log_limit`` (1,024) bytes.

The plugin's settings live in memory only. After a restart the plugin is loaded again
(INSTALL SONAME is recorded in mysql.plugin) but logging is off and the include list is
empty: live break-glass users are no longer logged (the next break-glass creation turns
logging on again). To keep logging across restarts, put this in my.cnf (measured: it takes
effect with or without ``plugin_load_add``, which only makes loading independent of
mysql.plugin); the placeholder keeps the list from being empty, i.e. from logging everyone:

    [mariadb]
    plugin_load_add = server_audit
    server_audit_logging = ON
    server_audit_events = QUERY
    server_audit_incl_users = dbaccess-none
"""

from __future__ import annotations

from dbaccess.broker.settings import TargetSection

SCHEMA = "dbaccess"
OWNER = "'dbaccess_owner'@'localhost'"
MAX_USERNAME = 32  # MySQL 8's limit; MariaDB allows 80
HASH_PATTERN = r"^\*[0-9A-F]{40}$"
AUDIT_PLACEHOLDER = "dbaccess-none"  # keeps server_audit_incl_users from being empty
AUDIT_LIST_MAX = 1023  # measured: 1,024 characters are silently cut to 1,023
AUDIT_LOCK = "dbaccess.server_audit"  # serialises read-modify-write of the include list
AUDIT_LOCK_SECONDS = 10


def _lit(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _exec(expression: str) -> str:
    return (
        f"SET @dbaccess_sql = {expression}; PREPARE dbaccess_stmt FROM @dbaccess_sql; "
        "EXECUTE dbaccess_stmt; DEALLOCATE PREPARE dbaccess_stmt;"
    )


def bootstrap_sql(target: TargetSection) -> list[str]:
    """Statements to run, in order, as an administrator (e.g. root)."""
    prefix = target.username_prefix
    room = MAX_USERNAME - len(prefix)
    name_pattern = "^" + prefix + "[a-z0-9_]{1," + str(room) + "}$"
    max_seconds = int(target.max_lifetime.total_seconds())
    groups = sorted({role.group_role for role in target.roles.values()})
    allowed = ", ".join(_lit(g) for g in groups)
    provisioner = f"{_lit(target.provisioner.user)}@'%'"
    account = "CONCAT(QUOTE(p_user), '@''%''')"
    like_prefix = _lit(prefix.replace("_", "\\_") + "%")  # LIKE treats _ as a wildcard
    validate_name = (
        f"IF p_user IS NULL OR p_user NOT REGEXP {_lit(name_pattern)} THEN "
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
    statements = [
        f"CREATE DATABASE IF NOT EXISTS {SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.managed_users ("
        " username VARCHAR(80) NOT NULL PRIMARY KEY,"
        " created_at DATETIME NOT NULL DEFAULT UTC_TIMESTAMP(),"
        " expires_at DATETIME NOT NULL)",
        f"CREATE USER IF NOT EXISTS {OWNER} ACCOUNT LOCK",
        f"ALTER USER {OWNER} ACCOUNT LOCK",
        # CREATE USER + CONNECTION ADMIN/PROCESS to see and kill sessions (without them
        # KILL fails silently); UPDATE on mysql for SET DEFAULT ROLE ... FOR.
        f"GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO {OWNER}",
        f"GRANT SELECT, UPDATE ON mysql.* TO {OWNER}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE, EVENT, EXECUTE ON {SCHEMA}.* TO {OWNER}",
        # Statement logging for break-glass users (see the module docstring).
        "BEGIN NOT ATOMIC IF NOT EXISTS (SELECT 1 FROM information_schema.PLUGINS "
        "WHERE PLUGIN_NAME = 'SERVER_AUDIT') THEN INSTALL SONAME 'server_audit'; END IF; END",
        f"GRANT SUPER ON *.* TO {OWNER}",
    ]
    for group in groups:
        statements += [
            f"CREATE ROLE IF NOT EXISTS {_ident(group)}",
            f"GRANT {_ident(group)} TO {OWNER} WITH ADMIN OPTION",
        ]
    statements += _audit_procedures(validate_name)
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
    IF EXISTS (SELECT 1 FROM mysql.user WHERE user = p_user) THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: the account already exists';
    END IF;
    IF p_log THEN
        -- Before the account exists: a user that cannot be logged is not created.
        CALL {SCHEMA}.audit_include(p_user);
    END IF;
    INSERT INTO {SCHEMA}.managed_users (username, expires_at) VALUES (p_user, p_expires);
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
    UPDATE {SCHEMA}.managed_users SET expires_at = p_expires WHERE username = p_user;
END""",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.revoke_user(
    IN p_user VARCHAR(80), OUT p_remaining INT)
SQL SECURITY DEFINER
BEGIN
    DECLARE v_id BIGINT;
    DECLARE v_tries INT DEFAULT 0;
    SET p_remaining = 0;
    IF NOT EXISTS (SELECT 1 FROM {SCHEMA}.managed_users WHERE username = p_user) THEN
        IF EXISTS (SELECT 1 FROM mysql.user WHERE user = p_user) THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'dbaccess: not created by dbaccess';
        END IF;
    ELSE
        IF EXISTS (SELECT 1 FROM mysql.user WHERE user = p_user AND host = '%') THEN
            -- Lock first: DROP USER alone would leave live sessions working.
            {_exec(f"CONCAT('ALTER USER ', {account}, ' ACCOUNT LOCK')")}
            kill_loop: LOOP
                SELECT MIN(ID) INTO v_id FROM information_schema.PROCESSLIST
                    WHERE USER = p_user AND ID <> CONNECTION_ID();
                IF v_id IS NULL THEN LEAVE kill_loop; END IF;
                SET v_tries = v_tries + 1;
                IF v_tries > 500 THEN
                    SELECT COUNT(*) INTO p_remaining FROM information_schema.PROCESSLIST
                        WHERE USER = p_user;
                    LEAVE kill_loop;
                END IF;
                BEGIN
                    DECLARE CONTINUE HANDLER FOR SQLEXCEPTION BEGIN END;  -- already gone
                    {_exec("CONCAT('KILL CONNECTION ', v_id)")}
                END;
                DO SLEEP(0.01);
            END LOOP;
            IF p_remaining = 0 THEN
                {_exec(f"CONCAT('DROP USER ', {account})")}
            END IF;
        END IF;
        IF p_remaining = 0 THEN
            -- A break-glass user leaves the statement-logging list with its account; before
            -- the record goes, so that a failure here is retried by the next revoke.
            CALL {SCHEMA}.audit_exclude(p_user);
            DELETE FROM {SCHEMA}.managed_users WHERE username = p_user;
        END IF;
    END IF;
END""",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.managed_users()
SQL SECURITY DEFINER
BEGIN
    SELECT username FROM {SCHEMA}.managed_users
    UNION
    SELECT user FROM mysql.user WHERE user LIKE {like_prefix}
        AND is_role = 'N';
END""",
        f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.expire_due()
SQL SECURITY DEFINER
BEGIN
    DECLARE v_user VARCHAR(80);
    DECLARE v_remaining INT;
    expire_loop: LOOP
        SET v_user = NULL;
        SELECT username INTO v_user FROM {SCHEMA}.managed_users
            WHERE expires_at <= UTC_TIMESTAMP() ORDER BY expires_at LIMIT 1;
        IF v_user IS NULL THEN LEAVE expire_loop; END IF;
        CALL {SCHEMA}.revoke_user(v_user, v_remaining);
        IF v_remaining > 0 THEN LEAVE expire_loop; END IF;
    END LOOP;
END""",
        # The server's own clock: runs when event_scheduler=ON, harmless otherwise.
        f"CREATE OR REPLACE DEFINER = {OWNER} EVENT {SCHEMA}.expire_due "
        f"ON SCHEDULE EVERY 2 SECOND DO CALL {SCHEMA}.expire_due()",
    ]
    for procedure in ("create_user", "renew_user", "revoke_user", "managed_users"):
        statements.append(f"GRANT EXECUTE ON PROCEDURE {SCHEMA}.{procedure} TO {provisioner}")
    return statements


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
    IF v_logging = 'OFF' THEN
        {_set_audit_variable("server_audit_logging", "'ON'")}
    END IF;
    DO RELEASE_LOCK({_lit(AUDIT_LOCK)});
END"""
    exclude = f"""CREATE OR REPLACE DEFINER = {OWNER} PROCEDURE {SCHEMA}.audit_exclude(
    IN p_user VARCHAR(80))
SQL SECURITY DEFINER
BEGIN
    DECLARE v_list TEXT;
    {locked}
    SET v_list = {_audit_variable("server_audit_incl_users")};
    IF v_list IS NOT NULL AND FIND_IN_SET(p_user, v_list) > 0 THEN
        WHILE FIND_IN_SET(p_user, v_list) > 0 DO
            SET v_list = TRIM(BOTH ',' FROM
                REPLACE(CONCAT(',', v_list, ','), CONCAT(',', p_user, ','), ','));
        END WHILE;
        {_set_audit_variable("server_audit_incl_users", f"IF(v_list = '', {placeholder}, v_list)")}
    END IF;
    DO RELEASE_LOCK({_lit(AUDIT_LOCK)});
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
        cur.execute(
            "ALTER USER %s@'%%' IDENTIFIED BY PASSWORD %s",
            (target.provisioner.user, native_password_hash(provisioner_password)),
        )
