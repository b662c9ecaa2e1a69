"""What ``dbaccess-broker check-config`` and the broker's start-up ask a MariaDB/MySQL
target (the EngineChecks of engines/base.py), as its provisioner: the bootstrap's
procedures, the server settings expiry and statement logging rest on, the grants of
read_only templates' group roles, and max_connections. PyMySQL is imported inside the
functions: ``check-config --offline`` logs in nowhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbaccess.broker.engines.base import LoginFailed, TargetUnreachable, Writes
from dbaccess.broker.engines.mariadb.bootstrap import (
    INIT_CONNECT,
    QUERY_LOG_LIMIT_MAX,
    kept_groups,
)
from dbaccess.broker.settings import TargetSection

if TYPE_CHECKING:
    import pymysql

PROCEDURES = ("create_user", "renew_user", "revoke_user", "managed_users")

read_only_caveat = "MariaDB has no read-only setting for an account,"


def _connect(target: TargetSection, password: str) -> pymysql.connections.Connection:
    import pymysql

    return pymysql.connect(
        host=target.host,
        port=target.port,
        user=target.provisioner.user,
        password=password,
        connect_timeout=5,
        read_timeout=10,
        program_name="dbaccess-broker check-config",
    )


def missing(target: TargetSection, password: str) -> list[str]:
    import pymysql

    try:
        conn = pymysql.connect(
            host=target.host,
            port=target.port,
            user=target.provisioner.user,
            password=password,
            connect_timeout=5,
            program_name="dbaccess-broker check-config",
        )
    except pymysql.err.OperationalError as exc:
        code, text = (exc.args + ("",))[:2]
        if code in (1044, 1045, 1698, 4151):  # access denied / account locked
            raise LoginFailed(str(text)) from None
        raise TargetUnreachable(str(text) or str(exc)) from None
    try:
        with conn.cursor() as cur:
            # ROUTINES lists only the procedures this user may execute: the provisioner's view
            cur.execute(
                "SELECT ROUTINE_NAME FROM information_schema.ROUTINES "
                "WHERE ROUTINE_SCHEMA = 'dbaccess' AND ROUTINE_TYPE = 'PROCEDURE'"
            )
            visible = {str(row[0]) for row in cur.fetchall()}
    finally:
        conn.close()
    return [
        f"procedure dbaccess.{name} (EXECUTE for {target.provisioner.user})"
        for name in PROCEDURES
        if name not in visible
    ]


def shared_server_warning(listed: str, host: str, port: int, targets: list[TargetSection]) -> str:
    return (
        f"targets {listed} are on one MariaDB server ({host}:{port}): it holds one "
        "dbaccess database, so the last bootstrap's procedures serve them all and "
        "each target's reconciler would drop the others' session users; keep one "
        'target per MariaDB server (docs/broker.md, "Several targets on one '
        'server")'
    )


def server_problems(target: TargetSection) -> tuple[list[str], list[str]]:
    """MariaDB has no account expiry: ``init_connect`` running dbaccess.login_check() is
    what refuses an expired session user at login after a stall or restart; without it an
    expired user can log in until the reaper drops it (an error). ``event_scheduler=OFF``
    (the server's default) stops only the server's own expiry event, the second clock
    next to the reaper (a warning). A ``server_audit_query_log_limit`` below the maximum
    cuts break-glass statements in the log (a warning: the next break-glass creation
    raises it). All three are lost at a restart unless in my.cnf (docs/broker.md). And a
    "drop" template's group role that is the DEFINER of objects (a warning): revocation
    drops every object defined as the role, an administrator's too. (Any account may read
    global variables.)"""
    conn = _connect(target, target.provisioner.read_password())
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT @@GLOBAL.init_connect, @@GLOBAL.event_scheduler, "
                "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES "
                "WHERE VARIABLE_NAME = 'SERVER_AUDIT_QUERY_LOG_LIMIT')"
            )
            row = cur.fetchone()
            defined = _group_role_objects(cur)
    finally:
        conn.close()
    init_connect, scheduler, log_limit = row if row else ("", "OFF", None)
    errors, warnings = [], []
    my_cnf = '(docs/broker.md, "MariaDB: expiry without account expiry")'
    if INIT_CONNECT not in str(init_connect or ""):
        errors.append(
            f"init_connect does not run {INIT_CONNECT}: an expired session user "
            "can log in until the broker's reaper drops it; run the bootstrap "
            f'again and put init_connect = "{INIT_CONNECT}" in my.cnf {my_cnf}'
        )
    if str(scheduler).upper() != "ON":
        warnings.append(
            f"event_scheduler is {scheduler}: the server's own expiry event does "
            "not run, only the broker's reaper drops expired users (logins are "
            f"still refused by init_connect); set event_scheduler = ON in my.cnf "
            f"{my_cnf}"
        )
    if log_limit is not None and int(str(log_limit)) < QUERY_LOG_LIMIT_MAX:
        warnings.append(
            f"server_audit_query_log_limit is {log_limit}: break-glass "
            "statements longer than that are cut in the server's log; put "
            f"server_audit_query_log_limit = {QUERY_LOG_LIMIT_MAX} in my.cnf "
            f"{my_cnf}"
        )
    if defined is None:
        warnings.append(
            "the bootstrap is older than this broker (no dbaccess.group_role_objects): run it again"
        )
    dropping = {role.group_role for role in target.roles.values()} - set(kept_groups(target))
    for group, count in sorted((defined or {}).items()):
        if group in dropping and count:
            warnings.append(
                f"group role '{group}' is the DEFINER of {count} routine(s), event(s), "
                'trigger(s) or view(s): its template\'s session_objects is "drop", so the '
                "next revocation of one of its sessions drops them, whoever made them; "
                "define an administrator's objects as another account "
                '(docs/broker.md, "Objects a session user makes")'
            )
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


# --- read-only templates hold only reading grants --------------------------------------
# MariaDB has no read-only setting for an account, and a session may lift its statement
# timeout (SET SESSION max_statement_time = 0): measured in tests/broker/engines/
# test_session_limits.py. So what a read-only template's group role is granted is all that
# keeps its sessions from writing.

# Privileges that do not write (EXECUTE runs routines whose definer decides).
READING = frozenset({"USAGE", "SELECT", "SHOW VIEW", "EXECUTE"})


def read_only_writes(name: str, target: TargetSection, groups: list[str]) -> Writes:
    """SHOW GRANTS by a session user of each template, made and revoked here through the
    definer procedures: the provisioner may not read another role's grants."""
    import re
    from datetime import UTC, datetime, timedelta

    import pymysql

    from dbaccess.broker.engines.base import NewUser, make_password, make_username
    from dbaccess.broker.engines.mariadb.engine import ENGINE
    from dbaccess.broker.settings import RoleTemplate

    engine = ENGINE(name, target)
    result: Writes = {}
    try:
        for group in groups:
            username = make_username(
                target.username_prefix, "checkconfig", engine.max_username_length
            )
            password = make_password()
            # a one-minute user with no power beyond the template's; if this process
            # dies before the revocation, the reconciler and the expiry event drop it
            engine.create_user(
                NewUser(
                    username,
                    password,
                    RoleTemplate(group_role=group),
                    datetime.now(UTC) + timedelta(minutes=1),
                )
            )
            try:
                conn = pymysql.connect(
                    host=target.host,
                    port=target.port,
                    user=username,
                    password=password,
                    connect_timeout=5,
                )
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
                privileges = {
                    p.strip() for p in re.sub(r"\([^)]*\)", "", grant.group(1)).split(",")
                }
                for privilege in sorted(privileges - READING):
                    found.setdefault(f"{privilege} on", []).append(grant.group(2).replace("`", ""))
                if "WITH GRANT OPTION" in line:
                    found.setdefault("GRANT OPTION on", []).append(grant.group(2).replace("`", ""))
            result[group] = found
    finally:
        engine.close()
    return result


def target_warnings(name: str, target: TargetSection) -> list[str]:
    """None beyond server_problems' (the objects a group role is the DEFINER of)."""
    return []


# --- connections ------------------------------------------------------------------------


def broker_connections(target: TargetSection, revoke_workers: int) -> int:
    """One connection per call: at most the creations plus the revocations at a time."""
    return target.create_concurrency + revoke_workers


def server_connections(target: TargetSection) -> tuple[int, int]:
    conn = _connect(target, target.provisioner.read_password())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@max_connections")
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0]), 0  # MariaDB keeps one extra connection for SUPER on top
