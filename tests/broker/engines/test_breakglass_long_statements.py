"""No statement of a break-glass user is cut in the server's log (issue 12, point 4).

On the suite's real servers, through the engines as the broker creates break-glass users:
a 200 kB statement (and, on PostgreSQL, a 200 kB bind parameter) is found whole in the
server's log, and the session cannot turn its own logging down. MariaDB's other ways to
hide a statement (multi-statements, PREPARE/EXECUTE, EXECUTE IMMEDIATE, comments) are in
test_mariadb_hardening.py, on a server of its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pymysql
import pytest

from dbaccess.broker.engines import Engine, NewUser, engine_for
from dbaccess.broker.engines.base import make_password, make_username
from dbaccess.broker.settings import TargetSection, load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration
BIG = 200_000
Users = tuple[Engine, Engine, dict[str, NewUser]]


@pytest.fixture
def targets(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, TargetSection]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    return load_settings(stack.broker_config).targets


@pytest.fixture
def breakglass(targets: dict[str, TargetSection]) -> Iterator[Users]:
    engines = {name: engine_for(name, targets[name]) for name in ("demo", "shop")}
    users: dict[str, NewUser] = {}
    for name, engine in engines.items():
        users[name] = NewUser(
            make_username(targets[name].username_prefix, "longlog", engine.max_username_length),
            make_password(),
            targets[name].roles["readonly"],
            datetime.now(UTC) + timedelta(minutes=10),
            log_statements=True,
        )
        engine.create_user(users[name])
    try:
        yield engines["demo"], engines["shop"], users
    finally:
        for name, engine in engines.items():
            engine.revoke_user(users[name].username)
            engine.close()


def wait_for(path: Path, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.1)


def line_with(log: str, text: str) -> str:
    lines = [line for line in log.splitlines() if text in line]
    assert lines, f"{text} is not in the server's log"
    return lines[0]


def test_postgres_logs_a_long_statement_whole(breakglass: Users, stack: Stack) -> None:
    _, _, users = breakglass
    user = users["demo"]
    mark, param_mark = f"long-{secrets.token_hex(5)}", f"param-{secrets.token_hex(5)}"
    filler = "z" * BIG
    with stack.postgres.connect("demo", user=user.username, password=user.password) as conn:
        conn.execute(f"SELECT '{mark}', '{filler}', 'end-{mark}'".encode())  # simple protocol
        conn.execute("SELECT %s::text", (f"{param_mark}{filler}end-{param_mark}",))  # extended
        # Nothing the session may run lowers its own logging (each is superuser-only).
        for setting in (
            "log_statement = 'none'",
            "log_min_duration_statement = -1",
            "log_parameter_max_length = 0",
            "log_min_error_statement = panic",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SET {setting}")
            conn.rollback()
        conn.execute("SELECT 1")
    log = wait_for(stack.postgres.log_path, f"end-{param_mark}")
    assert f"'{filler}', 'end-{mark}'" in line_with(log, mark)
    assert f"{param_mark}{filler}end-{param_mark}" in log  # the bind parameter, whole


def test_mariadb_logs_a_long_statement_whole(breakglass: Users, stack: Stack) -> None:
    _, _, users = breakglass
    user = users["shop"]
    mark = f"long-{secrets.token_hex(5)}"
    conn = stack.mariadb.connect(user=user.username, password=user.password)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT '{mark}', '{'z' * BIG}', 'end-{mark}'")
            cur.execute("SELECT 1")  # the plugin logs a query after answering it
    finally:
        conn.close()
    admin = stack.mariadb.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.server_audit_file_path")
            row = cur.fetchone()
    finally:
        admin.close()
    assert row is not None
    log = wait_for(stack.mariadb.data_dir / str(row[0]), f"end-{mark}")
    assert "z" * BIG in line_with(log, mark) and f"end-{mark}" in line_with(log, mark)


def test_mariadb_session_cannot_lower_the_limit(breakglass: Users, stack: Stack) -> None:
    _, _, users = breakglass
    user = users["shop"]
    conn = stack.mariadb.connect(user=user.username, password=user.password)
    try:
        with conn.cursor() as cur:
            for statement in (
                "SET GLOBAL server_audit_query_log_limit = 10",
                "SET sql_log_off = 1",
                f"SET GLOBAL server_audit_excl_users = '{user.username}'",
            ):
                with pytest.raises(pymysql.err.OperationalError, match="SUPER"):
                    cur.execute(statement)
    finally:
        conn.close()
