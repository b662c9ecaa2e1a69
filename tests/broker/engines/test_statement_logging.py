"""Break-glass users get every statement into the server's own log, on both engines.

Users are created through the engines (as the broker does) on the stack's real servers;
each logs in and runs a statement carrying a random marker, and the server's log is read.
PostgreSQL logs through ``log_statement = 'all'`` set on the role; MariaDB through the
``server_audit`` plugin's include list.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pymysql
import pytest
from psycopg import sql

from dbaccess.broker.engines import Engine, EngineError, NewUser, engine_for
from dbaccess.broker.engines.base import make_password, make_username
from dbaccess.broker.engines.mariadb.bootstrap import AUDIT_PLACEHOLDER
from dbaccess.broker.settings import TargetSection, load_settings
from dbaccess.sandbox.stack import PROVISIONER, PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration
# Measured on MariaDB 10.11: server_audit_incl_users keeps at most 1,023 characters; 1,024
# are cut to 1,023 without an error (the last name would be mangled), longer are refused.
INCL_USERS_LIMIT = 1023


@pytest.fixture
def targets(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, TargetSection]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    return load_settings(stack.broker_config).targets


@pytest.fixture
def demo(targets: dict[str, TargetSection]) -> Iterator[Engine]:
    engine = engine_for("demo", targets["demo"])
    yield engine
    engine.close()


@pytest.fixture
def shop(targets: dict[str, TargetSection]) -> Engine:
    return engine_for("shop", targets["shop"])


def marker() -> str:
    return f"bg-marker-{secrets.token_hex(6)}"


def new_user(engine: Engine, target: TargetSection, *, log: bool) -> NewUser:
    user = NewUser(
        make_username(target.username_prefix, "logtest", engine.max_username_length),
        make_password(),
        target.roles["readonly"],
        datetime.now(UTC) + timedelta(minutes=10),
        log_statements=log,
    )
    engine.create_user(user)
    return user


def wait_for(path: Path, text: str, timeout: float = 10) -> str:
    """The file's content once ``text`` is in it (servers write their logs asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.05)


# --- PostgreSQL ---------------------------------------------------------------------------


def pg_run(stack: Stack, user: NewUser, statement: str) -> None:
    with stack.postgres.connect("demo", user=user.username, password=user.password) as conn:
        conn.execute(statement.encode())
        # A second round trip: the first statement was logged (or not) before this answers.
        conn.execute("SELECT 1")


def test_postgres_logs_only_breakglass_users(
    demo: Engine, targets: dict[str, TargetSection], stack: Stack
) -> None:
    loud = new_user(demo, targets["demo"], log=True)
    quiet = new_user(demo, targets["demo"], log=False)
    try:
        quiet_marker, loud_marker = marker(), marker()
        pg_run(stack, quiet, f"SELECT '{quiet_marker}'")
        pg_run(stack, loud, f"SELECT '{loud_marker}'")
        log = wait_for(stack.postgres.log_path, loud_marker)
        lines = [line for line in log.splitlines() if loud_marker in line]
        assert lines, "the break-glass user's statement is not in the server log"
        assert f"user={loud.username} " in lines[0] and "statement:" in lines[0]
        assert quiet_marker not in log
    finally:
        demo.revoke_user(loud.username)
        demo.revoke_user(quiet.username)


def test_postgres_logging_cannot_be_switched_off(
    demo: Engine, targets: dict[str, TargetSection], stack: Stack
) -> None:
    loud = new_user(demo, targets["demo"], log=True)
    quiet = new_user(demo, targets["demo"], log=False)
    loud_id, quiet_id = sql.Identifier(loud.username), sql.Identifier(quiet.username)
    attempts: list[sql.SQL | sql.Composed] = [
        sql.SQL("SET log_statement = 'none'"),
        sql.SQL("ALTER ROLE dbaccess_provisioner SET log_statement = 'none'"),
        sql.SQL("ALTER ROLE {} SET log_statement = 'none'").format(loud_id),
        sql.SQL("ALTER ROLE {} RESET log_statement").format(loud_id),
        sql.SQL("ALTER ROLE {} SET log_statement = 'all'").format(quiet_id),
        sql.SQL("ALTER ROLE {} SUPERUSER").format(quiet_id),
        sql.SQL("ALTER ROLE {} PASSWORD 'taken-over'").format(quiet_id),
        sql.SQL("ALTER ROLE dbaccess_owner LOGIN"),
        sql.SQL("ALTER ROLE dbaccess_readonly LOGIN"),
        sql.SQL("ALTER SYSTEM SET log_statement = 'none'"),
        sql.SQL("GRANT SET ON PARAMETER log_statement TO dbaccess_provisioner"),
    ]
    try:
        with stack.postgres.connect(
            "demo", user=PROVISIONER, password=stack.provisioner_password
        ) as provisioner:
            for statement in attempts:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    provisioner.execute(statement)
        # nor can the break-glass user hide its own statements
        with stack.postgres.connect("demo", user=loud.username, password=loud.password) as own:
            assert own.execute("SHOW log_statement").fetchone() == ("all",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                own.execute("SET log_statement = 'none'")
    finally:
        demo.revoke_user(loud.username)
        demo.revoke_user(quiet.username)


# --- MariaDB ------------------------------------------------------------------------------


@contextmanager
def maria_admin(stack: Stack) -> Iterator[pymysql.cursors.Cursor]:
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def audit_globals(stack: Stack) -> tuple[str, str, str]:
    """(include list, logging, events) as the server has them now."""
    with maria_admin(stack) as cur:
        cur.execute(
            # NULL right after INSTALL SONAME or a restart: the same as empty
            "SELECT COALESCE(@@GLOBAL.server_audit_incl_users, ''), "
            "@@GLOBAL.server_audit_logging, "
            "@@GLOBAL.server_audit_events"
        )
        row = cur.fetchone()
    assert row is not None
    return str(row[0]), "ON" if row[1] in (1, "1", "ON") else "OFF", str(row[2])


def set_audit_globals(stack: Stack, incl_users: str, logging: str, events: str) -> None:
    with maria_admin(stack) as cur:
        cur.execute("SET GLOBAL server_audit_incl_users = %s", (incl_users,))
        cur.execute("SET GLOBAL server_audit_events = %s", (events,))
        cur.execute("SET GLOBAL server_audit_logging = %s", (logging,))


def listed(stack: Stack) -> list[str]:
    return audit_globals(stack)[0].split(",")


def audit_log_path(stack: Stack) -> Path:
    with maria_admin(stack) as cur:
        cur.execute("SELECT @@GLOBAL.server_audit_file_path")
        row = cur.fetchone()
    assert row is not None
    return stack.mariadb.data_dir / str(row[0])  # relative paths are in the data directory


def maria_run(stack: Stack, user: NewUser, statement: str) -> None:
    conn = stack.mariadb.connect(user=user.username, password=user.password)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            # The plugin logs a query after answering it; the next answer comes after that.
            cur.execute("SELECT 1")
    finally:
        conn.close()


def exists(stack: Stack, username: str) -> bool:
    with maria_admin(stack) as cur:
        cur.execute("SELECT COUNT(*) FROM mysql.user WHERE user = %s", (username,))
        row = cur.fetchone()
    return row is not None and row[0] > 0


@pytest.fixture
def audit_reset(stack: Stack) -> Iterator[None]:
    """Tests that reshape the plugin's globals leave them as they found them."""
    before = audit_globals(stack)
    yield
    set_audit_globals(stack, *before)


def test_mariadb_logs_only_breakglass_users(
    shop: Engine, targets: dict[str, TargetSection], stack: Stack
) -> None:
    loud = new_user(shop, targets["shop"], log=True)
    quiet = new_user(shop, targets["shop"], log=False)
    try:
        incl_users, logging, events = audit_globals(stack)
        assert logging == "ON" and "QUERY" in events.split(",")
        assert loud.username in incl_users.split(",")
        assert quiet.username not in incl_users.split(",")
        quiet_marker, loud_marker = marker(), marker()
        maria_run(stack, quiet, f"SELECT '{quiet_marker}'")
        maria_run(stack, loud, f"SELECT '{loud_marker}'")
        log = wait_for(audit_log_path(stack), loud_marker)
        lines = [line for line in log.splitlines() if loud_marker in line]
        assert lines, "the break-glass user's statement is not in server_audit.log"
        assert f",{loud.username}," in lines[0] and ",QUERY," in lines[0]
        assert quiet_marker not in log
    finally:
        shop.revoke_user(loud.username)
        shop.revoke_user(quiet.username)
    remaining = listed(stack)
    assert loud.username not in remaining
    assert AUDIT_PLACEHOLDER in remaining  # never empty: an empty list logs everyone


def test_mariadb_turns_logging_on_with_the_placeholder_first(
    shop: Engine, targets: dict[str, TargetSection], stack: Stack, audit_reset: None
) -> None:
    set_audit_globals(stack, "", "OFF", "")  # as right after the bootstrap
    loud = new_user(shop, targets["shop"], log=True)
    try:
        assert audit_globals(stack) == (f"{AUDIT_PLACEHOLDER},{loud.username}", "ON", "QUERY")
    finally:
        shop.revoke_user(loud.username)
    assert audit_globals(stack) == (AUDIT_PLACEHOLDER, "ON", "QUERY")


def test_mariadb_keeps_what_an_administrator_configured(
    shop: Engine, targets: dict[str, TargetSection], stack: Stack, audit_reset: None
) -> None:
    # Logging everyone already: nothing to add (and the list must stay empty to mean that).
    set_audit_globals(stack, "", "ON", "")
    everyone = new_user(shop, targets["shop"], log=True)
    assert audit_globals(stack) == ("", "ON", "")
    shop.revoke_user(everyone.username)
    # An administrator's own list and events stay; QUERY is added so the user is logged.
    set_audit_globals(stack, "audited_app", "ON", "CONNECT")
    loud = new_user(shop, targets["shop"], log=True)
    try:
        assert audit_globals(stack) == (f"audited_app,{loud.username}", "ON", "CONNECT,QUERY")
    finally:
        shop.revoke_user(loud.username)
    assert listed(stack) == ["audited_app"]


def test_mariadb_refuses_breakglass_when_the_list_is_full(
    shop: Engine, targets: dict[str, TargetSection], stack: Stack, audit_reset: None
) -> None:
    target = targets["shop"]
    user = NewUser(
        make_username(target.username_prefix, "logtest", shop.max_username_length),
        make_password(),
        target.roles["readonly"],
        datetime.now(UTC) + timedelta(minutes=10),
        log_statements=True,
    )
    room = INCL_USERS_LIMIT - len(AUDIT_PLACEHOLDER) - 2 - len(user.username)
    # 1,024 characters would be cut to 1,023 by the server without an error: refused.
    set_audit_globals(stack, f"{AUDIT_PLACEHOLDER},{'x' * (room + 1)}", "ON", "QUERY")
    with pytest.raises(EngineError, match="server_audit_incl_users is full"):
        shop.create_user(user)
    assert not exists(stack, user.username)  # no break-glass user without logging
    quiet = new_user(shop, target, log=False)  # users without logging are not affected
    shop.revoke_user(quiet.username)
    # 1,023 characters are kept whole.
    set_audit_globals(stack, f"{AUDIT_PLACEHOLDER},{'x' * room}", "ON", "QUERY")
    shop.create_user(user)
    try:
        incl_users = audit_globals(stack)[0]
        assert len(incl_users) == INCL_USERS_LIMIT and incl_users.endswith("," + user.username)
    finally:
        shop.revoke_user(user.username)
    assert listed(stack) == [AUDIT_PLACEHOLDER, "x" * room]


def test_mariadb_concurrent_breakglass_users_are_all_listed(
    shop: Engine, targets: dict[str, TargetSection], stack: Stack
) -> None:
    def create(_: int) -> NewUser:
        return new_user(shop, targets["shop"], log=True)

    with ThreadPoolExecutor(16) as pool:
        users = list(pool.map(create, range(16)))
    try:
        incl_users = listed(stack)
        assert [u.username for u in users if u.username not in incl_users] == []
    finally:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(shop.revoke_user, [u.username for u in users]))
    incl_users = listed(stack)
    assert [u.username for u in users if u.username in incl_users] == []
    assert AUDIT_PLACEHOLDER in incl_users


def test_mariadb_provisioner_cannot_change_logging_itself(stack: Stack) -> None:
    conn = stack.mariadb.connect(user=PROVISIONER, password=stack.provisioner_password)
    try:
        with conn.cursor() as cur:
            for statement in [
                "SET GLOBAL server_audit_logging = OFF",
                "SET GLOBAL server_audit_incl_users = ''",
                "SET GLOBAL server_audit_events = 'CONNECT'",
                "CALL dbaccess.audit_exclude('dba_anyone_1')",
                "CALL dbaccess.audit_include('dba_anyone_1')",
                "UNINSTALL SONAME 'server_audit'",
            ]:
                with pytest.raises((pymysql.err.OperationalError, pymysql.err.ProgrammingError)):
                    cur.execute(statement)
    finally:
        conn.close()


def test_mariadb_without_the_plugin(
    shop: Engine, targets: dict[str, TargetSection], stack: Stack, audit_reset: None
) -> None:
    with maria_admin(stack) as cur:
        cur.execute("UNINSTALL SONAME 'server_audit'")
    try:
        # Users without logging do not depend on the plugin; break-glass fails clearly.
        quiet = new_user(shop, targets["shop"], log=False)
        shop.revoke_user(quiet.username)
        with pytest.raises(EngineError, match="needs the server_audit plugin"):
            new_user(shop, targets["shop"], log=True)
    finally:
        with maria_admin(stack) as cur:
            cur.execute("INSTALL SONAME 'server_audit'")
