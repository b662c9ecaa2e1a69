"""One-time PostgreSQL set-up that keeps the broker's own credential powerless.

Measured on PostgreSQL 15: a role with CREATEROLE can make itself superuser-equivalent.
So the provisioner login the broker uses gets no role attributes at all; it may only
EXECUTE a few SECURITY DEFINER functions in the ``dbaccess`` schema. The functions belong
to ``dbaccess_owner`` (NOLOGIN, CREATEROLE, pg_signal_backend) and validate every argument
before acting: the managed prefix, an allow-list of group roles, a bounded expiry, a SCRAM
verifier (never a plaintext password). They only revoke or renew users recorded in
``dbaccess.managed_users``, i.e. users they created themselves.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbaccess.broker.engines.postgres.masking import mask_sql
from dbaccess.broker.settings import TargetSection

SCHEMA = "dbaccess"
OWNER = "dbaccess_owner"
B64 = "[A-Za-z0-9+/=]+"
VERIFIER_PATTERN = rf"^SCRAM-SHA-256\$4096:{B64}\${B64}:{B64}$"
# Every definer function runs with these, whatever the calling session set: a timestamp
# turned into text under the caller's TimeZone and DateStyle (e.g. 'Asia/Kolkata' with
# 'SQL, DMY' prints "IST", which reads back as Israel time) moved VALID UNTIL by hours past
# the bound the function had just checked (measured, PostgreSQL 15). The functions also
# compare names under COLLATE "C" and print timestamps with to_char in UTC, so they do not
# lean on these settings alone.
PINNED = (
    "SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' "
    "SET IntervalStyle = 'postgres' SET timezone_abbreviations = 'Default' "
    "SET lc_time = 'C' SET lc_numeric = 'C' SET lc_monetary = 'C'"
)
# A timestamptz as text no session setting can change the meaning of.
UTC_TEXT = "to_char(({}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"


def _id(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def _lit(value: object) -> str:
    return sql.Literal(value).as_string(None)


def bootstrap_sql(target: TargetSection) -> list[str]:
    """The statements, in order, to run as a superuser in the target database."""
    prefix = target.username_prefix
    max_seconds = int(target.max_lifetime.total_seconds())
    groups = sorted({role.group_role for role in target.roles.values()})
    provisioner = target.provisioner.user
    room = 63 - len(prefix)
    pattern = "^" + prefix + "[a-z0-9_]{1," + str(room) + "}$"
    allowed = "ARRAY[" + ", ".join(_lit(g) for g in groups) + "]::text[]"
    statements = [
        _create_role_if_missing(OWNER, "NOLOGIN CREATEROLE"),
        f"GRANT pg_signal_backend TO {_id(OWNER)}",
        # Break-glass users get log_statement = 'all', a superuser-only setting: since
        # PostgreSQL 15 a superuser can grant just that (older servers: statement logging
        # for break-glass needs log_statement set by an administrator).
        "DO $do$ BEGIN IF current_setting('server_version_num')::int >= 150000 THEN "
        f"EXECUTE 'GRANT SET ON PARAMETER log_statement TO {_id(OWNER)}'; END IF; END $do$",
        f"CREATE SCHEMA IF NOT EXISTS {_id(SCHEMA)} AUTHORIZATION {_id(OWNER)}",
        f"REVOKE ALL ON SCHEMA {_id(SCHEMA)} FROM PUBLIC",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.managed_users ("
        " username text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())",
        # The group a user was made in decides what revocation does with its objects.
        f"ALTER TABLE {SCHEMA}.managed_users ADD COLUMN IF NOT EXISTS group_role text",
        # Names are compared byte by byte, whatever the database's default collation.
        f'ALTER TABLE {SCHEMA}.managed_users ALTER COLUMN username TYPE text COLLATE "C"',
        f"ALTER TABLE {SCHEMA}.managed_users OWNER TO {_id(OWNER)}",
        f"REVOKE ALL ON {SCHEMA}.managed_users FROM PUBLIC",
    ]
    statements += [_create_role_if_missing(group, "NOLOGIN") for group in groups]
    keep_groups = sorted(
        {role.group_role for role in target.roles.values() if role.session_objects == "keep"}
    )
    keeping = "ARRAY[" + ", ".join(_lit(g) for g in keep_groups) + "]::text[]"
    statements += [
        # Kept objects are reassigned to their template's group role, which must therefore
        # hold no attribute a definer function or view of its own could borrow.
        f"ALTER ROLE {_id(group)} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        "NOBYPASSRLS"
        for group in keep_groups
    ]
    statements += [
        _create_role_if_missing(provisioner, "LOGIN"),
        # Whatever it had before, the provisioner keeps no power of its own.
        f"ALTER ROLE {_id(provisioner)} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        "NOBYPASSRLS",
        f"GRANT USAGE ON SCHEMA {_id(SCHEMA)} TO {_id(provisioner)}",
        f"""CREATE OR REPLACE FUNCTION {SCHEMA}.create_user(
    p_username text, p_verifier text, p_valid_until timestamptz, p_group text,
    p_connection_limit integer, p_read_only boolean, p_statement_timeout_ms integer,
    p_log_all boolean)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
{PINNED} AS $fn$
BEGIN
    IF p_username IS NULL OR p_username COLLATE "C" !~ {_lit(pattern)} THEN
        RAISE EXCEPTION 'dbaccess: % is not a managed user name', p_username;
    END IF;
    IF p_group IS NULL OR NOT (p_group COLLATE "C" = ANY ({allowed})) THEN
        RAISE EXCEPTION 'dbaccess: % is not an allowed group role', p_group;
    END IF;
    IF p_verifier IS NULL OR p_verifier COLLATE "C" !~ {_lit(VERIFIER_PATTERN)} THEN
        RAISE EXCEPTION 'dbaccess: the password must be a SCRAM-SHA-256 verifier';
    END IF;
    IF p_valid_until IS NULL OR p_valid_until <= now()
       OR p_valid_until > now() + make_interval(secs => {max_seconds}) THEN
        RAISE EXCEPTION 'dbaccess: expiry % is outside (now, now + {max_seconds}s]',
            {UTC_TEXT.format("p_valid_until")};
    END IF;
    IF p_connection_limit IS NULL OR p_connection_limit NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'dbaccess: connection limit must be between 1 and 100';
    END IF;
    IF p_statement_timeout_ms IS NOT NULL AND p_statement_timeout_ms NOT BETWEEN 0 AND 86400000 THEN
        RAISE EXCEPTION 'dbaccess: statement timeout out of range';
    END IF;
    INSERT INTO {SCHEMA}.managed_users (username, group_role) VALUES (p_username, p_group);
    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L '
                   'VALID UNTIL %L CONNECTION LIMIT %s IN ROLE %I',
                   p_username, p_verifier, {UTC_TEXT.format("p_valid_until")},
                   p_connection_limit, p_group);
    IF p_read_only THEN
        EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', p_username);
    END IF;
    IF p_statement_timeout_ms IS NOT NULL THEN
        EXECUTE format('ALTER ROLE %I SET statement_timeout = %s', p_username,
                       p_statement_timeout_ms);
    END IF;
    IF p_log_all THEN
        EXECUTE format('ALTER ROLE %I SET log_statement = %L', p_username, 'all');
    END IF;
END
$fn$""",
        # The whole life of a user is bounded by its creation plus max_lifetime, however
        # often it is renewed (the broker's policy says the same; this holds even for a
        # caller that is not the broker). 'DBA01' tells the broker it is a refusal (4xx).
        f"""CREATE OR REPLACE FUNCTION {SCHEMA}.renew_user(p_username text,
    p_valid_until timestamptz)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER
{PINNED} AS $fn$
DECLARE
    born timestamptz;
BEGIN
    SELECT created_at INTO born FROM {SCHEMA}.managed_users
     WHERE username COLLATE "C" = p_username COLLATE "C";
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dbaccess: % was not created by dbaccess', p_username;
    END IF;
    IF p_valid_until IS NULL OR p_valid_until <= now()
       OR p_valid_until > now() + make_interval(secs => {max_seconds}) THEN
        RAISE EXCEPTION 'dbaccess: expiry % is outside (now, now + {max_seconds}s]',
            {UTC_TEXT.format("p_valid_until")};
    END IF;
    IF p_valid_until > born + make_interval(secs => {max_seconds}) THEN
        RAISE EXCEPTION USING ERRCODE = 'DBA01', MESSAGE = format(
            'dbaccess: %s was created at %s; it may live until %s at the latest '
            '(max_lifetime {max_seconds}s), not until %s', p_username,
            {UTC_TEXT.format("born")},
            {UTC_TEXT.format(f"born + make_interval(secs => {max_seconds})")},
            {UTC_TEXT.format("p_valid_until")});
    END IF;
    EXECUTE format('ALTER ROLE %I VALID UNTIL %L', p_username,
                   {UTC_TEXT.format("p_valid_until")});
END
$fn$""",
        # Returns NULL once the user is gone, else why it is not (it stays NOLOGIN, and
        # the broker retries and records each attempt). Only what this database holds can
        # be dropped here: DROP OWNED works per database.
        # (It returned the number of sessions left before: a new return type needs a drop.)
        "DO $do$ BEGIN IF EXISTS (SELECT 1 FROM pg_proc WHERE oid = "
        f"to_regprocedure('{SCHEMA}.revoke_user(text)') AND prorettype = 'integer'::regtype) "
        f"THEN DROP FUNCTION {SCHEMA}.revoke_user(text); END IF; END $do$",
        f"""CREATE OR REPLACE FUNCTION {SCHEMA}.revoke_user(p_username text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER
{PINNED} AS $fn$
DECLARE
    remaining integer;
    deadline timestamptz := clock_timestamp() + interval '5 seconds';
    v_group text;
    elsewhere text;
    fn regprocedure;
    detail text;
BEGIN
    SELECT group_role INTO v_group FROM {SCHEMA}.managed_users
     WHERE username COLLATE "C" = p_username COLLATE "C";
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_username) THEN
            RAISE EXCEPTION 'dbaccess: % was not created by dbaccess', p_username;
        END IF;
        RETURN NULL;  -- already gone: revoking is idempotent
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_username) THEN
        -- NOLOGIN first: DROP ROLE alone would leave live sessions running.
        EXECUTE format('ALTER ROLE %I NOLOGIN', p_username);
        LOOP
            PERFORM pg_stat_clear_snapshot();
            PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = p_username;
            PERFORM pg_stat_clear_snapshot();
            SELECT count(*) INTO remaining FROM pg_stat_activity WHERE usename = p_username;
            EXIT WHEN remaining = 0 OR clock_timestamp() > deadline;
            PERFORM pg_sleep(0.01);
        END LOOP;
        IF remaining > 0 THEN
            RETURN format('%s session(s) of %s did not terminate yet', remaining, p_username);
        END IF;
        SELECT string_agg(DISTINCT d.datname, ', ') INTO elsewhere
          FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
         WHERE s.refclassid = 'pg_authid'::regclass
           AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = p_username)
           AND d.datname <> current_database();
        IF elsewhere IS NOT NULL THEN
            RETURN format('%s owns objects or holds privileges in database(s) %s, which '
                          'revocation cannot reach (DROP OWNED works per database); it stays '
                          'NOLOGIN and is retried: an administrator runs DROP OWNED BY %I '
                          '(or REASSIGN OWNED) there', p_username, elsewhere, p_username);
        END IF;
        IF v_group IS NULL THEN  -- registered by an older bootstrap: ask the catalog
            SELECT b.rolname INTO v_group FROM pg_auth_members m
              JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
             WHERE u.rolname = p_username AND b.rolname::text = ANY ({allowed})
             ORDER BY 1 LIMIT 1;
        END IF;
        {_drop_block("p_username", "v_group", keeping, "RETURN ")}
    END IF;
    DELETE FROM {SCHEMA}.managed_users WHERE username COLLATE "C" = p_username COLLATE "C";
    RETURN NULL;
END
$fn$""",
        _revoke_users(allowed, keeping),
        f"""CREATE OR REPLACE FUNCTION {SCHEMA}.managed_users()
RETURNS SETOF text LANGUAGE sql SECURITY DEFINER
{PINNED} AS $fn$
    SELECT username FROM {SCHEMA}.managed_users
    UNION
    SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, {_lit(prefix)})
$fn$""",
        _inventory(prefix),
        # A session user makes objects as itself: membership in its group role would let
        # it SET ROLE to the group, or ALTER ... OWNER TO the group, and leave objects no
        # revocation can tell from others, running with the group's rights for whoever
        # calls them. This event trigger (per database: the target's) refuses DDL by a
        # managed user that leaves an object owned by anyone else — but the group of a
        # "keep" template, which owns what such sessions keep anyway.
        f"""CREATE OR REPLACE FUNCTION {SCHEMA}.guard_session_ddl()
RETURNS event_trigger LANGUAGE plpgsql SECURITY DEFINER
{PINNED} AS $fn$
DECLARE
    v_group text;
    stray text;
BEGIN
    SELECT group_role INTO v_group FROM {SCHEMA}.managed_users
     WHERE username COLLATE "C" = session_user::text COLLATE "C";
    IF NOT FOUND THEN
        RETURN;  -- not a session user
    END IF;
    SELECT r.rolname INTO stray
      FROM pg_event_trigger_ddl_commands() c
      JOIN pg_shdepend d ON d.classid = c.classid AND d.objid = c.objid AND d.deptype = 'o'
       AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      JOIN pg_roles r ON r.oid = d.refobjid
     WHERE r.rolname <> session_user
       AND NOT (r.rolname::text = v_group AND v_group = ANY ({keeping}))
     LIMIT 1;
    IF stray IS NOT NULL THEN
        RAISE EXCEPTION 'dbaccess: session user % may not make objects owned by %',
            session_user, stray
            USING HINT = 'create and own objects as the session user itself (no SET ROLE, '
                         'no OWNER TO): what it makes is dealt with at its revocation';
    END IF;
END
$fn$""",
        f"ALTER FUNCTION {SCHEMA}.guard_session_ddl() OWNER TO {_id(OWNER)}",
        f"REVOKE ALL ON FUNCTION {SCHEMA}.guard_session_ddl() FROM PUBLIC",
        "DO $do$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = "
        "'dbaccess_guard_session_ddl') THEN CREATE EVENT TRIGGER dbaccess_guard_session_ddl "
        f"ON ddl_command_end EXECUTE FUNCTION {SCHEMA}.guard_session_ddl(); END IF; END $do$",
    ]
    signatures = [
        "create_user(text, text, timestamptz, text, integer, boolean, integer, boolean)",
        "renew_user(text, timestamptz)",
        "revoke_user(text)",
        "revoke_users(text[])",
        "managed_users()",
        "inventory()",
    ]
    for signature in signatures:
        statements += [
            f"ALTER FUNCTION {SCHEMA}.{signature} OWNER TO {_id(OWNER)}",
            f"REVOKE ALL ON FUNCTION {SCHEMA}.{signature} FROM PUBLIC",
            f"GRANT EXECUTE ON FUNCTION {SCHEMA}.{signature} TO {_id(provisioner)}",
        ]
    # Masked columns: the group roles' column grants and masked views (masking.py).
    return statements + mask_sql(target)


# Predefined roles whose members can read or change any data, reach the server's files or
# programs, or end others' sessions: membership in one is a standing power.
PRIVILEGED_PREDEFINED = (
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
    "pg_create_subscription",
    "pg_checkpoint",
    "pg_maintain",
    "pg_use_reserved_connections",
)


def _inventory(prefix: str) -> str:
    """Every login role: its attributes, the roles it holds (through others too), which of
    those carry powers, its expiry, what it owns in this database (or shared), and whether
    dbaccess made it. One pass over the catalogs: 10,000 roles in well under a second."""
    predefined = "ARRAY[" + ", ".join(_lit(r) for r in PRIVILEGED_PREDEFINED) + "]::text[]"
    return f"""CREATE OR REPLACE FUNCTION {SCHEMA}.inventory()
RETURNS TABLE(username text, superuser boolean, createrole boolean, createdb boolean,
              bypassrls boolean, replication boolean, valid_until text, member_of text[],
              privileged text[], owned bigint, managed boolean)
LANGUAGE sql STABLE SECURITY DEFINER
{PINNED} SET enable_nestloop = off AS $fn$
    -- enable_nestloop off: with the catalogs' statistics stale (as they are after many
    -- roles were made), the planner took the role list for one row and aggregated the
    -- memberships once per role: 90 s for 10,000 roles, against well under 1 s hashed
    WITH RECURSIVE reach(member, role) AS (
        SELECT member, roleid FROM pg_auth_members
        UNION
        SELECT r.member, m.roleid FROM reach r JOIN pg_auth_members m ON m.member = r.role
    ), held AS (
        SELECT x.member,
               array_agg(g.rolname::text ORDER BY g.rolname::text COLLATE "C") AS member_of,
               array_agg(g.rolname::text ORDER BY g.rolname::text COLLATE "C")
                   FILTER (WHERE g.rolsuper OR g.rolcreaterole OR g.rolbypassrls
                           OR g.rolreplication OR g.rolname::text = ANY ({predefined}))
                   AS privileged
          FROM reach x JOIN pg_roles g ON g.oid = x.role
         GROUP BY x.member
    ), owned AS (
        SELECT refobjid AS role, count(*) AS n FROM pg_shdepend
         WHERE deptype = 'o'
           AND dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
         GROUP BY refobjid
    )
    SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls,
           r.rolreplication,
           CASE WHEN r.rolvaliduntil IS NULL OR r.rolvaliduntil = 'infinity' THEN NULL
                ELSE {UTC_TEXT.format("r.rolvaliduntil")} END,
           coalesce(h.member_of, '{{}}'), coalesce(h.privileged, '{{}}'), coalesce(o.n, 0),
           starts_with(r.rolname, {_lit(prefix)})
               OR r.rolname::text IN (SELECT m.username FROM {SCHEMA}.managed_users m)
      FROM pg_roles r
      LEFT JOIN held h ON h.member = r.oid
      LEFT JOIN owned o ON o.role = r.oid
     WHERE r.rolcanlogin
     ORDER BY r.rolname::text COLLATE "C"
$fn$"""


def _drop_block(name: str, group: str, keeping: str, fail: str, then: str = "") -> str:
    """The subtransaction that disposes of a locked user's objects and drops it, shared by
    revoke_user and revoke_users: its objects are dropped, or for a "keep" template handed
    to the template's group role; a failure (RESTRICT, a lock) undoes only this block, and
    ``fail`` hands on the reason (the user stays NOLOGIN and is retried). ``then`` runs in
    the block after the drop."""
    return f"""BEGIN
            EXECUTE format('GRANT %I TO {OWNER}', {name});
            IF {group} COLLATE "C" = ANY ({keeping}) THEN
                -- "keep" (a migration template): the template's own NOLOGIN group role
                -- owns what the session made, so it runs and reads with exactly the
                -- template's rights, and the template's later sessions may alter it. Its
                -- definer routines are not everyone's to call: that would lend the
                -- template's rights to any role.
                EXECUTE format('GRANT %I TO {OWNER}', {group});
                EXECUTE format('REASSIGN OWNED BY %I TO %I', {name}, {group});
                FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
                           WHERE p.proowner = (SELECT oid FROM pg_roles WHERE rolname = {group})
                             AND p.prosecdef LOOP
                    EXECUTE format('REVOKE EXECUTE ON ROUTINE %s FROM PUBLIC', fn);
                END LOOP;
                EXECUTE format('REVOKE %I FROM {OWNER}', {group});
            ELSIF EXISTS (SELECT 1 FROM pg_shdepend d WHERE {_group_large_objects(group)}) THEN
                -- "drop": large objects owned by the group role. lo_create is no DDL, so
                -- the event trigger does not see one made after SET ROLE to the group,
                -- and DROP OWNED BY the session user does not reach it. No session may
                -- leave anything owned by a "drop" group: this session's revocation (its
                -- backends are gone) unlinks whatever the group owns, so none outlives
                -- the session that made it (check-config warns of the group's own).
                EXECUTE format('GRANT %I TO {OWNER}', {group});
                PERFORM lo_unlink(d.objid) FROM pg_shdepend d
                  WHERE {_group_large_objects(group)};
                EXECUTE format('REVOKE %I FROM {OWNER}', {group});
            END IF;
            -- "drop" (the default): everything it owns here goes, with its default
            -- privileges and the privileges granted to it. RESTRICT: an object someone
            -- else built on them stops this (visibly) instead of being dropped too.
            EXECUTE format('DROP OWNED BY %I RESTRICT', {name});
            EXECUTE format('DROP ROLE %I', {name});{then}
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            {fail}format('%s cannot be dropped yet: %s%s; it stays NOLOGIN and is retried',
                          {name}, SQLERRM,
                          CASE WHEN detail <> '' THEN ' (' || replace(detail, E'\\n', '; ')
                               || ')' ELSE '' END);
        END;"""


def _group_large_objects(group: str) -> str:
    """pg_shdepend ``d``'s rows of the large objects in this database owned by the role
    named ``group`` (through the index on the referenced role: no scan of
    pg_largeobject_metadata, which may hold millions)."""
    return (
        f"d.refclassid = 'pg_authid'::regclass AND d.refobjid = (SELECT oid FROM pg_roles "
        f"WHERE rolname = {group}) AND d.classid = 'pg_largeobject'::regclass "
        "AND d.deptype = 'o' AND d.dbid = (SELECT oid FROM pg_database "
        "WHERE datname = current_database())"
    )


MAX_REVOKE_BATCH = 1000  # names per revoke_users call (the broker sends 50 at most)


def _revoke_users(allowed: str, keeping: str) -> str:
    """``revoke_users(names)``: what revoke_user does, for a batch, in one transaction.

    One NOLOGIN pass, one terminate-and-wait loop and one final terminate pass serve the
    whole batch: in an expiry storm, revoke_user's two pg_stat_activity snapshots per user
    (each reads every backend's entry) cost about as much as the drop itself. Each user's
    drop is a subtransaction of its own, so one that fails (RESTRICT, objects in another
    database, a session that will not end) stays NOLOGIN with its reason and the others
    go. The broker sends at most 50 names a call, fewer than the 64 subtransactions a
    backend tracks in shared memory: past that, every other session's snapshot looks
    subtransactions up in pg_subtrans while this transaction runs.

    One row per distinct name: ``outcome`` NULL when the user is gone (or never was),
    else why not, in revoke_user's words. A role dbaccess did not create is not touched.
    """
    dropped = f"""
            DELETE FROM {SCHEMA}.managed_users m
             WHERE m.username COLLATE "C" = v_name COLLATE "C";
            gone := gone || locked_oids[i];"""
    return f"""CREATE OR REPLACE FUNCTION {SCHEMA}.revoke_users(p_usernames text[])
RETURNS TABLE(username text, outcome text) LANGUAGE plpgsql SECURITY DEFINER
{PINNED} AS $fn$
#variable_conflict use_column
DECLARE
    deadline timestamptz := clock_timestamp() + interval '5 seconds';
    -- drops not begun by then are left to the next call: the whole call stays within
    -- the broker's statement_timeout (8 s) however slow each drop is
    budget timestamptz := clock_timestamp() + interval '6 seconds';
    u record;
    locked_names text[] := '{{}}';
    locked_oids oid[] := '{{}}';
    locked_groups text[] := '{{}}';
    gone oid[] := '{{}}';
    i integer;
    v_name text;
    v_group text;
    n_left integer;
    elsewhere text;
    fn regprocedure;
    detail text;
BEGIN
    IF cardinality(p_usernames) > {MAX_REVOKE_BATCH} THEN
        RAISE EXCEPTION 'dbaccess: at most {MAX_REVOKE_BATCH} names per revoke_users call';
    END IF;
    FOR u IN SELECT DISTINCT ON (n.name COLLATE "C") n.name, m.username IS NOT NULL AS managed,
                    m.group_role, r.oid AS role_oid
               FROM unnest(p_usernames) AS n(name)
               LEFT JOIN {SCHEMA}.managed_users m
                      ON m.username COLLATE "C" = n.name COLLATE "C"
               LEFT JOIN pg_roles r ON r.rolname = n.name
              WHERE n.name IS NOT NULL
              ORDER BY n.name COLLATE "C" LOOP
        username := u.name;
        IF NOT u.managed THEN
            -- not dbaccess's: never touched (absent: already gone, revoking is idempotent)
            outcome := CASE WHEN u.role_oid IS NOT NULL
                            THEN format('dbaccess: %s was not created by dbaccess', u.name) END;
            RETURN NEXT;
        ELSIF u.role_oid IS NULL THEN
            DELETE FROM {SCHEMA}.managed_users m
             WHERE m.username COLLATE "C" = u.name COLLATE "C";
            outcome := NULL;
            RETURN NEXT;
        ELSE
            -- NOLOGIN first: DROP ROLE alone would leave live sessions running.
            EXECUTE format('ALTER ROLE %I NOLOGIN', u.name);
            locked_names := locked_names || u.name;
            locked_oids := locked_oids || u.role_oid;
            locked_groups := locked_groups || u.group_role;
        END IF;
    END LOOP;
    IF cardinality(locked_names) = 0 THEN
        RETURN;
    END IF;
    LOOP
        PERFORM pg_stat_clear_snapshot();
        PERFORM pg_terminate_backend(a.pid) FROM pg_stat_activity a
          WHERE a.usesysid = ANY (locked_oids);
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                               WHERE a.usesysid = ANY (locked_oids))
               OR clock_timestamp() > deadline;
        PERFORM pg_sleep(0.01);
    END LOOP;
    FOR i IN 1 .. cardinality(locked_names) LOOP
        v_name := locked_names[i];
        v_group := locked_groups[i];
        username := v_name;
        -- the snapshot of the last pass: no new one per user
        SELECT count(*) INTO n_left FROM pg_stat_activity a
         WHERE a.usesysid = locked_oids[i];
        SELECT string_agg(DISTINCT d.datname, ', ') INTO elsewhere
          FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
         WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = locked_oids[i]
           AND d.datname <> current_database();
        IF n_left > 0 THEN
            outcome := format('%s session(s) of %s did not terminate yet', n_left, v_name);
        ELSIF elsewhere IS NOT NULL THEN
            outcome := format('%s owns objects or holds privileges in database(s) %s, which '
                              'revocation cannot reach (DROP OWNED works per database); it '
                              'stays NOLOGIN and is retried: an administrator runs DROP OWNED '
                              'BY %I (or REASSIGN OWNED) there', v_name, elsewhere, v_name);
        ELSIF clock_timestamp() > budget THEN
            outcome := format('%s is locked (NOLOGIN) but was not dropped within this '
                              'call''s time; it is retried', v_name);
        ELSE
            IF v_group IS NULL THEN  -- registered by an older bootstrap: ask the catalog
                SELECT b.rolname INTO v_group FROM pg_auth_members am
                  JOIN pg_roles b ON b.oid = am.roleid
                 WHERE am.member = locked_oids[i] AND b.rolname::text = ANY ({allowed})
                 ORDER BY 1 LIMIT 1;
            END IF;
            outcome := NULL;
            {_drop_block("v_name", "v_group", keeping, "outcome := ", dropped)}
        END IF;
        RETURN NEXT;
    END LOOP;
    -- A login that got in after the wait (NOLOGIN is not visible to other sessions before
    -- this transaction commits) would outlive its dropped role: end it too.
    IF cardinality(gone) > 0 THEN
        PERFORM pg_stat_clear_snapshot();
        PERFORM pg_terminate_backend(a.pid) FROM pg_stat_activity a
          WHERE a.usesysid = ANY (gone);
    END IF;
END
$fn$"""


def _create_role_if_missing(name: str, options: str) -> str:
    return (
        "DO $do$ BEGIN "
        f"IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_lit(name)}) THEN "
        f"CREATE ROLE {_id(name)} {options}; END IF; END $do$"
    )


def render(target_name: str, target: TargetSection) -> str:
    """The SQL as a script a DBA can read, review and run with psql."""
    head = (
        f"-- dbaccess bootstrap for target '{target_name}' (database {target.database}).\n"
        "-- Run once as a superuser in that database. Then set the provisioner's password\n"
        f"-- with \\password {target.provisioner.user} (or use: dbaccess-broker bootstrap "
        f"{target_name} --apply).\n"
    )
    return head + "".join(f"\n{statement};\n" for statement in bootstrap_sql(target))


def apply(
    target: TargetSection, admin: psycopg.Connection[tuple[object, ...]], provisioner_password: str
) -> None:
    """Run the bootstrap through ``admin`` (a superuser connection to the target database)
    and give the provisioner its password, sent only as a SCRAM verifier."""
    password = provisioner_password
    with admin.transaction():
        for statement in bootstrap_sql(target):
            admin.execute(statement.encode())
        verifier = admin.pgconn.encrypt_password(
            password.encode(), target.provisioner.user.encode(), b"scram-sha-256"
        )
        admin.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(target.provisioner.user), sql.Literal(verifier.decode())
            )
        )
