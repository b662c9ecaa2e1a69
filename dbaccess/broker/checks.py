"""What ``dbaccess-broker check-config`` asks each target, as the broker itself would log in:
is it bootstrapped (definer functions the provisioner may execute, group roles), and do
two targets share one server's roles."""

from __future__ import annotations

from dataclasses import dataclass

from dbaccess.broker.settings import Settings, TargetSection

FUNCTIONS = ("create_user", "renew_user", "revoke_user", "managed_users")


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
    for function in FUNCTIONS:
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
