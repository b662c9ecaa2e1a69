"""What ``dbaccess-broker check-config`` and the broker's start-up ask a PostgreSQL target
(the EngineChecks of engines/base.py), as its provisioner: the bootstrap's functions and
group roles, the write privileges of read_only templates' group roles, the large objects
revocation would unlink or cannot reach, and max_connections. psycopg is imported inside
the functions: ``check-config --offline`` logs in nowhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbaccess.broker.engines.base import LoginFailed, TargetUnreachable, Writes, first_few
from dbaccess.broker.engines.postgres.tls import ssl_root
from dbaccess.broker.settings import TargetSection

if TYPE_CHECKING:
    import psycopg

# The bootstrap's functions, the batch revocation (the reaper's, in an expiry storm)
# included: the broker works without it, one revoke_user call per user, as on an older
# bootstrap, but check-config asks for it.
FUNCTIONS = ("create_user", "renew_user", "revoke_user", "revoke_users", "managed_users")

read_only_caveat = "A session can turn read-only off (it is only a default),"


def _connect(target: TargetSection, password: str) -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg

    return psycopg.connect(
        host=target.host,
        port=target.port,
        dbname=target.database,
        user=target.provisioner.user,
        password=password,
        sslmode=target.sslmode,
        sslrootcert=ssl_root(target),
        connect_timeout=5,
        application_name="dbaccess-broker check-config",
    )


def missing(target: TargetSection, password: str) -> list[str]:
    import psycopg

    try:
        conn = _connect(target, password)
    except psycopg.OperationalError as exc:
        # 'connection failed: connection to server at "h", port 5432 failed: FATAL:  ...'
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _, found, reason = line.rpartition(" failed: ")
        text = (reason if found else line).removeprefix("FATAL:").strip()
        if (
            "authentication failed" in text
            or "does not exist" in text
            or "not permitted to log in" in text
        ):
            raise LoginFailed(text) from None
        raise TargetUnreachable(text) from None
    with conn:
        rows = conn.execute(
            "SELECT p.proname, has_function_privilege(p.oid, 'EXECUTE'), p.prosrc "
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'dbaccess'"
        ).fetchall()
        functions = {str(row[0]): (bool(row[1]), str(row[2])) for row in rows}
        groups = sorted({role.group_role for role in target.roles.values()})
        present = {
            str(row[0])
            for row in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (groups,)
            ).fetchall()
        }
    absent = []
    for function in FUNCTIONS:
        if function not in functions:
            absent.append(f"function dbaccess.{function}")
        elif not functions[function][0]:
            absent.append(f"EXECUTE on dbaccess.{function} for {target.provisioner.user}")
    absent += [f"group role {group}" for group in groups if group not in present]
    if "create_user" in functions:
        # a role template added after the bootstrap: its group is not in the allow-list
        source = functions["create_user"][1]
        absent += [
            f"group role {group} in the allow-list of dbaccess.create_user"
            for group in groups
            if group in present and f"'{group}'" not in source
        ]
    if (
        "revoke_user" in functions
        and "DROP OWNED BY %I RESTRICT" not in functions["revoke_user"][1]
    ):
        # an older bootstrap: it reassigns a session's objects to dbaccess_owner
        absent.append(
            "the current dbaccess.revoke_user (an older one hands what a "
            "session made to dbaccess_owner)"
        )
    elif "revoke_user" in functions and "lo_unlink" not in functions["revoke_user"][1]:
        absent.append(
            "the current dbaccess.revoke_user (an older one leaves the large "
            "objects a session made after SET ROLE to its group role)"
        )
    return absent


def shared_server_warning(listed: str, host: str, port: int, targets: list[TargetSection]) -> str:
    prefixes = {target.username_prefix for target in targets}
    same = " and the same username_prefix" if len(prefixes) < len(targets) else ""
    return (
        f"targets {listed} are on one server ({host}:{port}{same}): its roles are "
        'shared by all its databases (docs/broker.md, "Several targets on one '
        'server"); give each target its own username_prefix and group_role names, '
        "and revoke CONNECT on each database from PUBLIC"
    )


# --- read-only templates hold only reading grants --------------------------------------
# A session may lift read_only (SET default_transaction_read_only = off) and its statement
# timeout (SET statement_timeout = 0): measured in tests/broker/engines/
# test_session_limits.py. So what a read-only template's group role is granted is all that
# keeps its sessions from writing; the catalog's has_*_privilege functions tell.

_WRITES = """
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


def read_only_writes(name: str, target: TargetSection, groups: list[str]) -> Writes:
    with _connect(target, target.provisioner.read_password()) as conn:
        result: Writes = {}
        for group in groups:
            found: dict[str, list[str]] = {}
            for kind, what in conn.execute(_WRITES, {"g": group}).fetchall():
                found.setdefault(str(kind), []).append(str(what))
            result[group] = found
    return result


# --- large objects ----------------------------------------------------------------------
# lo_create is no DDL: the event trigger does not see a large object, so a session user
# can SET ROLE to any role it is a member of and leave one owned by that role (PostgreSQL
# 15 has no membership without SET ROLE). Revocation of a "drop" template's session
# unlinks those of its group role; those of a role beyond it are out of its reach.

_LARGE_OBJECTS = """
SELECT count(*) FROM pg_shdepend d
 WHERE d.refclassid = 'pg_authid'::regclass
   AND d.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %(g)s)
   AND d.classid = 'pg_largeobject'::regclass AND d.deptype = 'o'
   AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_BEYOND = """
SELECT b.rolname::text FROM pg_roles b
 WHERE b.rolname <> %(g)s AND pg_has_role(%(g)s, b.oid, 'MEMBER') ORDER BY 1
"""


def target_warnings(name: str, target: TargetSection) -> list[str]:
    """A warning for each "drop" template's group role that owns large objects (the next
    revocation of one of its sessions unlinks them, whoever made them), and for each
    template's group role that is a member of other roles (a session can SET ROLE to them
    and leave large objects owned by them, which no revocation unlinks)."""
    # as the bootstrap's revoke_user decides: a group any "keep" template uses keeps
    keep = {r.group_role for r in target.roles.values() if r.session_objects == "keep"}
    groups = sorted({role.group_role for role in target.roles.values()})
    try:
        with _connect(target, target.provisioner.read_password()) as conn:
            found: dict[str, tuple[int, list[str]]] = {}
            for group in groups:
                row = conn.execute(_LARGE_OBJECTS, {"g": group}).fetchone()
                found[group] = (
                    int(row[0]) if row else 0,
                    [str(r[0]) for r in conn.execute(_BEYOND, {"g": group})],
                )
    except Exception as exc:  # the target answered check_target a moment ago: say, go on
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [f"target '{name}': could not check its group roles' large objects: {line}"]
    warnings = []
    for group, (owned, beyond) in found.items():
        if owned and group not in keep:
            warnings.append(
                f"target '{name}': group role {group} owns {owned} large object(s): its "
                'template\'s session_objects is "drop", so the next revocation of one of '
                "its sessions unlinks them, whoever made them; give an administrator's large "
                'objects another owner (docs/broker.md, "Objects a session user makes")'
            )
        if beyond:
            warnings.append(
                f"target '{name}': group role {group} is a member of {first_few(beyond)}: a "
                "session can SET ROLE to them and make large objects owned by them (no DDL: "
                "the event trigger does not see it), which its revocation does not unlink; "
                f"grant {group} those roles' privileges instead of the roles "
                "(docs/security.md)"
            )
    return warnings


# --- connections ------------------------------------------------------------------------


def broker_connections(target: TargetSection, revoke_workers: int) -> int:
    """The provisioner's pool, whatever the creations and revocations at a time."""
    from dbaccess.broker.engines.postgres.engine import POOL_SIZE

    return POOL_SIZE


def server_connections(target: TargetSection) -> tuple[int, int]:
    with _connect(target, target.provisioner.read_password()) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', "
            "'superuser_reserved_connections', 'reserved_connections')"
        ).fetchall()
    settings = {str(name): int(value) for name, value in rows}
    reserved = settings.get("superuser_reserved_connections", 0) + settings.get(
        "reserved_connections", 0
    )
    return settings["max_connections"], reserved


def server_problems(target: TargetSection) -> tuple[list[str], list[str]]:
    """None to check: the expiry (VALID UNTIL) and statement logging (a role setting) are
    the bootstrap's, which ``missing`` checks."""
    return [], []
