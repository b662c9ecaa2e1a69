"""What ``dbaccess-broker check-config`` asks each target, as the broker itself would log in:
is it bootstrapped (definer functions the provisioner may execute, group roles), and do
two targets share one server's roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbaccess.broker.settings import Settings, TargetSection

FUNCTIONS = ("create_user", "renew_user", "revoke_user", "managed_users")
# PostgreSQL's bootstrap also has a batch revocation (the reaper's, in an expiry storm); a
# broker works without it, one revoke_user call per user, as on an older bootstrap.
POSTGRES_FUNCTIONS = ("create_user", "renew_user", "revoke_user", "revoke_users",
                      "managed_users")


@dataclass(frozen=True)
class Problem:
    target: str
    message: str
    hint: str


def bootstrap_hint(name: str, config: str) -> str:
    return (f"dbaccess-broker bootstrap {name} --config {config} (prints the SQL to review; "
            "--apply runs it with $DBACCESS_ADMIN_DSN)")


def check_target(name: str, target: TargetSection, config: str) -> Problem | None:
    """None when the broker can work with ``target``; else what is wrong and what to run."""
    hint = bootstrap_hint(name, config)
    where = f"{target.engine} {target.host}:{target.port}/{target.database}"
    try:
        password = target.provisioner.read_password()
        missing = (_missing_postgres if target.engine == "postgres" else _missing_mariadb)(
            target, password)
    except _LoginFailed as exc:
        return Problem(
            name,
            f"target '{name}' ({where}): cannot log in as {target.provisioner.user}: {exc}",
            f"if the target is not bootstrapped yet: {hint}; otherwise check the "
            "provisioner's password (bootstrap --apply sets it)",
        )
    except _Unreachable as exc:
        return Problem(name, f"target '{name}' ({where}): cannot connect: {exc}",
                       "check targets." + name + ".host and .port, and that the server runs")
    if not missing:
        return None
    return Problem(
        name,
        f"target '{name}' ({where}) is not bootstrapped: missing {', '.join(missing)}",
        hint,
    )


def shared_servers(settings: Settings) -> list[str]:
    """Warnings for targets on one server: PostgreSQL roles and MariaDB users are
    server-wide, so such targets share group roles and see each other's managed users."""
    by_server: dict[tuple[str, str, int], list[str]] = {}
    for name, target in settings.targets.items():
        by_server.setdefault((target.engine, target.host, target.port), []).append(name)
    warnings = []
    for (engine, host, port), names in sorted(by_server.items()):
        if len(names) < 2:
            continue
        listed = ", ".join(repr(n) for n in names)
        if engine == "mariadb":
            warnings.append(
                f"targets {listed} are on one MariaDB server ({host}:{port}): it holds one "
                "dbaccess database, so the last bootstrap's procedures serve them all and "
                "each target's reconciler would drop the others' session users; keep one "
                "target per MariaDB server (docs/broker.md, \"Several targets on one "
                "server\")")
            continue
        prefixes = {settings.targets[n].username_prefix for n in names}
        same = " and the same username_prefix" if len(prefixes) < len(names) else ""
        warnings.append(
            f"targets {listed} are on one server ({host}:{port}{same}): its roles are "
            "shared by all its databases (docs/broker.md, \"Several targets on one "
            "server\"); give each target its own username_prefix and group_role names, "
            "and revoke CONNECT on each database from PUBLIC"
        )
    return warnings


class _LoginFailed(Exception):
    pass


class _Unreachable(Exception):
    pass


def _missing_postgres(target: TargetSection, password: str) -> list[str]:
    import psycopg

    try:
        conn = psycopg.connect(host=target.host, port=target.port, dbname=target.database,
                               user=target.provisioner.user, password=password,
                               sslmode=target.sslmode, connect_timeout=5,
                               application_name="dbaccess-broker check-config")
    except psycopg.OperationalError as exc:
        # 'connection failed: connection to server at "h", port 5432 failed: FATAL:  ...'
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _, found, reason = line.rpartition(" failed: ")
        text = (reason if found else line).removeprefix("FATAL:").strip()
        if "authentication failed" in text or "does not exist" in text \
                or "not permitted to log in" in text:
            raise _LoginFailed(text) from None
        raise _Unreachable(text) from None
    with conn:
        rows = conn.execute(
            "SELECT p.proname, has_function_privilege(p.oid, 'EXECUTE'), p.prosrc "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'dbaccess'").fetchall()
        functions = {str(row[0]): (bool(row[1]), str(row[2])) for row in rows}
        groups = sorted({role.group_role for role in target.roles.values()})
        present = {str(row[0]) for row in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (groups,)).fetchall()}
    missing = []
    for function in POSTGRES_FUNCTIONS:
        if function not in functions:
            missing.append(f"function dbaccess.{function}")
        elif not functions[function][0]:
            missing.append(f"EXECUTE on dbaccess.{function} for {target.provisioner.user}")
    missing += [f"group role {group}" for group in groups if group not in present]
    if "create_user" in functions:
        # a role template added after the bootstrap: its group is not in the allow-list
        source = functions["create_user"][1]
        missing += [f"group role {group} in the allow-list of dbaccess.create_user"
                    for group in groups if group in present and f"'{group}'" not in source]
    if "revoke_user" in functions and "DROP OWNED BY %I RESTRICT" not in functions[
            "revoke_user"][1]:
        # an older bootstrap: it reassigns a session's objects to dbaccess_owner
        missing.append("the current dbaccess.revoke_user (an older one hands what a "
                       "session made to dbaccess_owner)")
    elif "revoke_user" in functions and "lo_unlink" not in functions["revoke_user"][1]:
        missing.append("the current dbaccess.revoke_user (an older one leaves the large "
                       "objects a session made after SET ROLE to its group role)")
    return missing


def _missing_mariadb(target: TargetSection, password: str) -> list[str]:
    import pymysql

    try:
        conn = pymysql.connect(host=target.host, port=target.port,
                               user=target.provisioner.user, password=password,
                               connect_timeout=5, program_name="dbaccess-broker check-config")
    except pymysql.err.OperationalError as exc:
        code, text = (exc.args + ("",))[:2]
        if code in (1044, 1045, 1698, 4151):  # access denied / account locked
            raise _LoginFailed(str(text)) from None
        raise _Unreachable(str(text) or str(exc)) from None
    try:
        with conn.cursor() as cur:
            # ROUTINES lists only the procedures this user may execute: the provisioner's view
            cur.execute("SELECT ROUTINE_NAME FROM information_schema.ROUTINES "
                        "WHERE ROUTINE_SCHEMA = 'dbaccess' AND ROUTINE_TYPE = 'PROCEDURE'")
            visible = {str(row[0]) for row in cur.fetchall()}
    finally:
        conn.close()
    return [f"procedure dbaccess.{name} (EXECUTE for {target.provisioner.user})"
            for name in FUNCTIONS if name not in visible]


def mariadb_server_problems(target: TargetSection) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the server settings MariaDB's expiry and statement logging
    rest on, read as the provisioner (any account may read global variables).

    MariaDB has no account expiry: ``init_connect`` running dbaccess.login_check() is
    what refuses an expired session user at login after a stall or restart; without it an
    expired user can log in until the reaper drops it (an error). ``event_scheduler=OFF``
    (the server's default) stops only the server's own expiry event, the second clock
    next to the reaper (a warning). A ``server_audit_query_log_limit`` below the maximum
    cuts break-glass statements in the log (a warning: the next break-glass creation
    raises it). All three are lost at a restart unless in my.cnf (docs/broker.md). And a
    "drop" template's group role that is the DEFINER of objects (a warning): revocation
    drops every object defined as the role, an administrator's too."""
    import pymysql

    from dbaccess.broker.engines.mariadb.bootstrap import (
        INIT_CONNECT,
        QUERY_LOG_LIMIT_MAX,
        kept_groups,
    )

    conn = pymysql.connect(host=target.host, port=target.port, user=target.provisioner.user,
                           password=target.provisioner.read_password(), connect_timeout=5,
                           read_timeout=10, program_name="dbaccess-broker check-config")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.init_connect, @@GLOBAL.event_scheduler, "
                        "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES "
                        "WHERE VARIABLE_NAME = 'SERVER_AUDIT_QUERY_LOG_LIMIT')")
            row = cur.fetchone()
            defined = _group_role_objects(cur)
    finally:
        conn.close()
    init_connect, scheduler, log_limit = row if row else ("", "OFF", None)
    errors, warnings = [], []
    my_cnf = "(docs/broker.md, \"MariaDB: expiry without account expiry\")"
    if INIT_CONNECT not in str(init_connect or ""):
        errors.append(f"init_connect does not run {INIT_CONNECT}: an expired session user "
                      "can log in until the broker's reaper drops it; run the bootstrap "
                      f"again and put init_connect = \"{INIT_CONNECT}\" in my.cnf {my_cnf}")
    if str(scheduler).upper() != "ON":
        warnings.append(f"event_scheduler is {scheduler}: the server's own expiry event does "
                        "not run, only the broker's reaper drops expired users (logins are "
                        f"still refused by init_connect); set event_scheduler = ON in my.cnf "
                        f"{my_cnf}")
    if log_limit is not None and int(str(log_limit)) < QUERY_LOG_LIMIT_MAX:
        warnings.append(f"server_audit_query_log_limit is {log_limit}: break-glass "
                        "statements longer than that are cut in the server's log; put "
                        f"server_audit_query_log_limit = {QUERY_LOG_LIMIT_MAX} in my.cnf "
                        f"{my_cnf}")
    if defined is None:
        warnings.append("the bootstrap is older than this broker (no "
                        "dbaccess.group_role_objects): run it again")
    dropping = {role.group_role for role in target.roles.values()} - set(kept_groups(target))
    for group, count in sorted((defined or {}).items()):
        if group in dropping and count:
            warnings.append(
                f"group role '{group}' is the DEFINER of {count} routine(s), event(s), "
                "trigger(s) or view(s): its template's session_objects is \"drop\", so the "
                "next revocation of one of its sessions drops them, whoever made them; "
                "define an administrator's objects as another account "
                "(docs/broker.md, \"Objects a session user makes\")")
    return errors, warnings


def _group_role_objects(cur: Any) -> dict[str, int] | None:
    """How many objects each group role is the DEFINER of (bootstrap's
    group_role_objects); None when the bootstrap predates it."""
    import pymysql

    try:
        cur.execute("CALL dbaccess.group_role_objects()")
    except pymysql.err.MySQLError as exc:
        # does not exist, or (the provisioner has no right on a missing one) denied
        if exc.args and exc.args[0] in (1305, 1370):
            return None
        raise
    return {str(role): int(count) for role, count in cur.fetchall()}


def log_mariadb_server_problems(targets: dict[str, TargetSection]) -> None:
    """At broker start-up, in a thread of its own (a target that does not answer must not
    delay the start): say in the log what mariadb_server_problems finds."""
    import logging

    log = logging.getLogger("dbaccess.broker")
    for name, target in targets.items():
        if target.engine != "mariadb":
            continue
        try:
            errors, warnings = mariadb_server_problems(target)
        except Exception as exc:  # noqa: BLE001 - the reaper reports an unreachable target
            log.warning("target '%s': cannot check its server settings: %s", name,
                        type(exc).__name__)
            continue
        for message in errors:
            log.error("target '%s': %s", name, message)
        for message in warnings:
            log.warning("target '%s': %s", name, message)


def mariadb_settings(settings: Settings, config: str) -> tuple[list[Problem], list[str]]:
    """check-config's part: each MariaDB target's server errors (as problems) and
    warnings. A target it cannot reach is left to check_target, which says why."""
    problems, warnings = [], []
    for name, target in settings.targets.items():
        if target.engine != "mariadb":
            continue
        try:
            errors, found = mariadb_server_problems(target)
        except Exception:  # noqa: BLE001 - check_target reports the target's failure
            continue
        warnings += [f"target '{name}': {message}" for message in found]
        problems += [Problem(name, f"target '{name}': {message}", bootstrap_hint(name, config))
                     for message in errors]
    return problems, warnings
# --- read-only templates hold only reading grants --------------------------------------
# A session may lift read_only (SET default_transaction_read_only = off; MariaDB has no
# such setting) and its statement timeout (SET statement_timeout = 0; SET SESSION
# max_statement_time = 0): measured in tests/broker/engines/test_session_limits.py. So what a
# read-only template's group role is granted is all that keeps its sessions from writing.

# MariaDB privileges that do not write (EXECUTE runs routines whose definer decides).
MARIADB_READING = frozenset({"USAGE", "SELECT", "SHOW VIEW", "EXECUTE"})
_SHOWN = 5  # objects named per kind of write privilege; the rest are counted

_PG_WRITES = """
SELECT 'INSERT/UPDATE/DELETE/TRUNCATE on', c.oid::regclass::text FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
   AND (has_table_privilege(%(g)s, c.oid, 'INSERT') OR has_table_privilege(%(g)s, c.oid, 'UPDATE')
        OR has_table_privilege(%(g)s, c.oid, 'DELETE')
        OR has_table_privilege(%(g)s, c.oid, 'TRUNCATE'))
UNION ALL
SELECT 'CREATE on schema', n.nspname::text FROM pg_namespace n
 WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
   AND has_schema_privilege(%(g)s, n.oid, 'CREATE')
UNION ALL
SELECT 'CREATE on database', current_database()::text
 WHERE has_database_privilege(%(g)s, current_database(), 'CREATE')
UNION ALL
SELECT 'ownership of', count(*) || ' object(s) in this database' FROM pg_shdepend s
 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND s.deptype = 'o' AND pg_has_role(%(g)s, s.refobjid, 'USAGE')
HAVING count(*) > 0
UNION ALL
SELECT 'membership in', b.rolname::text FROM pg_roles b
 WHERE b.rolname <> %(g)s AND pg_has_role(%(g)s, b.oid, 'USAGE')
   AND (b.rolsuper OR b.rolcreaterole OR b.rolcreatedb OR b.rolbypassrls OR b.rolname IN
        ('pg_write_all_data', 'pg_write_server_files', 'pg_execute_server_program',
         'pg_signal_backend', 'pg_checkpoint'))
"""


def read_only_warnings(name: str, target: TargetSection) -> list[str]:
    """A warning for each ``read_only`` template whose group role can write; nothing for
    a target with no such template. Asked as the provisioner (PostgreSQL: the catalog's
    has_*_privilege functions; MariaDB: SHOW GRANTS by a session user of the template,
    made and revoked here through the definer procedures, since the provisioner may not
    read another role's grants there)."""
    templates: dict[str, list[str]] = {}
    for role_name, role in sorted(target.roles.items()):
        if role.read_only:
            templates.setdefault(role.group_role, []).append(role_name)
    if not templates:
        return []
    try:
        if target.engine == "postgres":
            writes = _postgres_writes(target, sorted(templates))
        else:
            writes = _mariadb_writes(name, target, sorted(templates))
    except Exception as exc:  # the target answered check_target a moment ago: say, go on
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"target '{name}': could not check what the read_only templates' group "
                f"roles may write: {line}"]
    why = ("A session can turn read-only off (it is only a default)," if target.engine ==
           "postgres" else "MariaDB has no read-only setting for an account,")
    warnings = []
    for group, found in writes.items():
        if not found:
            continue
        held = "; ".join(
            f"{kind} {', '.join(objects[:_SHOWN])}"
            + (f" (+{len(objects) - _SHOWN} more)" if len(objects) > _SHOWN else "")
            for kind, objects in found.items())
        names = " and ".join(f"'{t}'" for t in templates[group])
        warnings.append(
            f"target '{name}': role template {names} is read_only, but its group role "
            f"{group} holds {held}. {why} so these grants are what it may do: revoke them "
            "(docs/broker.md, \"What a session can change\")")
    return warnings


def _postgres_writes(target: TargetSection,
                     groups: list[str]) -> dict[str, dict[str, list[str]]]:
    import psycopg

    with psycopg.connect(host=target.host, port=target.port, dbname=target.database,
                         user=target.provisioner.user,
                         password=target.provisioner.read_password(), sslmode=target.sslmode,
                         connect_timeout=5,
                         application_name="dbaccess-broker check-config") as conn:
        result: dict[str, dict[str, list[str]]] = {}
        for group in groups:
            found: dict[str, list[str]] = {}
            for kind, what in conn.execute(_PG_WRITES, {"g": group}).fetchall():
                found.setdefault(str(kind), []).append(str(what))
            result[group] = found
    return result


def _mariadb_writes(name: str, target: TargetSection,
                    groups: list[str]) -> dict[str, dict[str, list[str]]]:
    import re
    from datetime import UTC, datetime, timedelta

    import pymysql

    from dbaccess.broker.engines import NewUser, engine_for
    from dbaccess.broker.engines.base import make_password, make_username
    from dbaccess.broker.settings import RoleTemplate

    engine = engine_for(name, target)
    result: dict[str, dict[str, list[str]]] = {}
    try:
        for group in groups:
            username = make_username(target.username_prefix, "checkconfig",
                                     engine.max_username_length)
            password = make_password()
            # a one-minute user with no power beyond the template's; if this process
            # dies before the revocation, the reconciler and the expiry event drop it
            engine.create_user(NewUser(username, password, RoleTemplate(group_role=group),
                                       datetime.now(UTC) + timedelta(minutes=1)))
            try:
                conn = pymysql.connect(host=target.host, port=target.port, user=username,
                                       password=password, connect_timeout=5)
                try:
                    with conn.cursor() as cur:
                        cur.execute(f"SHOW GRANTS FOR `{group}`")  # a validated SQL name
                        lines = [str(row[0]) for row in cur.fetchall()]
                finally:
                    conn.close()
            finally:
                engine.revoke_user(username)
            found: dict[str, list[str]] = {}
            for line in lines:
                if (role := re.fullmatch(r"GRANT `([^`]+)` TO .*", line)) is not None:
                    found.setdefault("membership in", []).append(role.group(1))
                    continue
                grant = re.fullmatch(r"GRANT (.+?) ON (\S+) TO .*", line)
                if grant is None:
                    continue
                privileges = {p.strip() for p in re.sub(r"\([^)]*\)", "",
                                                        grant.group(1)).split(",")}
                for privilege in sorted(privileges - MARIADB_READING):
                    found.setdefault(f"{privilege} on", []).append(
                        grant.group(2).replace("`", ""))
                if "WITH GRANT OPTION" in line:
                    found.setdefault("GRANT OPTION on", []).append(
                        grant.group(2).replace("`", ""))
            result[group] = found
    finally:
        engine.close()
    return result


# --- large objects (PostgreSQL) ---------------------------------------------------------
# lo_create is no DDL: the event trigger does not see a large object, so a session user
# can SET ROLE to any role it is a member of and leave one owned by that role (PostgreSQL
# 15 has no membership without SET ROLE). Revocation of a "drop" template's session
# unlinks those of its group role; those of a role beyond it are out of its reach.

_PG_LARGE_OBJECTS = """
SELECT count(*) FROM pg_shdepend d
 WHERE d.refclassid = 'pg_authid'::regclass
   AND d.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %(g)s)
   AND d.classid = 'pg_largeobject'::regclass AND d.deptype = 'o'
   AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_PG_BEYOND = """
SELECT b.rolname::text FROM pg_roles b
 WHERE b.rolname <> %(g)s AND pg_has_role(%(g)s, b.oid, 'MEMBER') ORDER BY 1
"""


def large_object_warnings(name: str, target: TargetSection) -> list[str]:
    """PostgreSQL: a warning for each "drop" template's group role that owns large objects
    (the next revocation of one of its sessions unlinks them, whoever made them), and for
    each template's group role that is a member of other roles (a session can SET ROLE to
    them and leave large objects owned by them, which no revocation unlinks)."""
    if target.engine != "postgres":
        return []
    import psycopg

    # as the bootstrap's revoke_user decides: a group any "keep" template uses keeps
    keep = {r.group_role for r in target.roles.values() if r.session_objects == "keep"}
    groups = sorted({role.group_role for role in target.roles.values()})
    try:
        with psycopg.connect(host=target.host, port=target.port, dbname=target.database,
                             user=target.provisioner.user,
                             password=target.provisioner.read_password(),
                             sslmode=target.sslmode, connect_timeout=5,
                             application_name="dbaccess-broker check-config") as conn:
            found: dict[str, tuple[int, list[str]]] = {}
            for group in groups:
                row = conn.execute(_PG_LARGE_OBJECTS, {"g": group}).fetchone()
                found[group] = (int(row[0]) if row else 0,
                                [str(r[0]) for r in conn.execute(_PG_BEYOND, {"g": group})])
    except Exception as exc:  # the target answered check_target a moment ago: say, go on
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"target '{name}': could not check its group roles' large objects: {line}"]
    warnings = []
    for group, (owned, beyond) in found.items():
        if owned and group not in keep:
            warnings.append(
                f"target '{name}': group role {group} owns {owned} large object(s): its "
                "template's session_objects is \"drop\", so the next revocation of one of "
                "its sessions unlinks them, whoever made them; give an administrator's large "
                "objects another owner (docs/broker.md, \"Objects a session user makes\")")
        if beyond:
            shown = ", ".join(beyond[:_SHOWN]) + (
                f" (+{len(beyond) - _SHOWN} more)" if len(beyond) > _SHOWN else "")
            warnings.append(
                f"target '{name}': group role {group} is a member of {shown}: a session can "
                "SET ROLE to them and make large objects owned by them (no DDL: the event "
                "trigger does not see it), which its revocation does not unlink; grant "
                f"{group} those roles' privileges instead of the roles (docs/security.md)")
    return warnings
