"""Limits a session user cannot lift (issue 12, point 5), on the suite's real servers.

What a session may change, measured here and written down in docs/broker.md ("What a
session can change"): on PostgreSQL ``default_transaction_read_only`` and
``statement_timeout`` are the session's own settings (``SET ... = off``/``= 0`` works), so
a read-only template is read-only through its group role's grants alone. On MariaDB an
account's ``MAX_STATEMENT_TIME`` is only the session's starting value of
``max_statement_time``, which the session may set to 0 too, and there is no read-only
setting of any account. ``dbaccess-broker check-config`` warns when a read-only
template's group role holds more than reading (see tests/broker/test_check_config.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pymysql
import pytest

from dbaccess.broker.engines import Engine, NewUser, engine_for
from dbaccess.broker.settings import RoleTemplate, load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration
READONLY = RoleTemplate(
    group_role="dbaccess_readonly", read_only=True, statement_timeout=timedelta(seconds=1)
)


@pytest.fixture
def engines(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Engine]]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    made = {name: engine_for(name, settings.targets[name]) for name in ("demo", "shop")}
    yield made
    for engine in made.values():
        engine.close()


def new_user(engine: Engine, prefix: str = "dba_") -> tuple[str, str]:
    username = f"{prefix}limits_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    engine.create_user(
        NewUser(username, password, READONLY, datetime.now(UTC) + timedelta(minutes=10))
    )
    return username, password


def test_postgres_session_lifts_both_defaults_and_still_cannot_write(
    stack: Stack, engines: dict[str, Engine]
) -> None:
    user, password = new_user(engines["demo"])
    try:
        with stack.postgres.connect("demo", user=user, password=password) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1s",)
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(3)")
            # both are the session's to change: no privilege is needed to lift them
            conn.execute("SET default_transaction_read_only = off")
            conn.execute("SET statement_timeout = 0")
            started = time.monotonic()
            conn.execute("SELECT pg_sleep(1.5)")
            assert time.monotonic() - started >= 1.5
            conn.execute("BEGIN READ WRITE")
            conn.execute("ROLLBACK")
            # ... the grants hold: the group role has SELECT only
            for statement in (
                "INSERT INTO orders (customer, total) VALUES ('mallory', 1)",
                "UPDATE orders SET total = 0",
                "DELETE FROM orders",
                "TRUNCATE orders",
                "CREATE TABLE mine (a int)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement.encode())
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    finally:
        engines["demo"].revoke_user(user)


def test_mariadb_session_lifts_the_statement_time_and_still_cannot_write(
    stack: Stack, engines: dict[str, Engine]
) -> None:
    user, password = new_user(engines["shop"])
    conn = stack.mariadb.connect(user=user, password=password)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@max_statement_time, @@tx_read_only")
            assert cur.fetchone() == (1.0, 0)  # the account's limit; no read-only of its own
            with pytest.raises(pymysql.err.OperationalError) as interrupted:
                cur.execute("SELECT SLEEP(3)")
            assert interrupted.value.args[0] == 1969  # max_statement_time exceeded
            cur.execute("SET SESSION max_statement_time = 0")  # the session may lift it
            started = time.monotonic()
            cur.execute("SELECT SLEEP(1.5)")
            assert cur.fetchone() == (0,) and time.monotonic() - started >= 1.5
            for statement in (
                "INSERT INTO shop.orders (customer, total) VALUES ('m', 1)",
                "UPDATE shop.orders SET total = 0",
                "DELETE FROM shop.orders",
                "CREATE TABLE shop.mine (a int)",
                "CREATE PROCEDURE shop.p() SELECT 1",
            ):
                with pytest.raises(pymysql.err.OperationalError) as denied:
                    cur.execute(statement)
                assert denied.value.args[0] in (1142, 1044), denied.value.args
    finally:
        conn.close()
        engines["shop"].revoke_user(user)
