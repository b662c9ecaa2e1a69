"""A PostgreSQL store that stops answering fails the broker's and the gateway's calls
within ``[broker] store_statement_timeout`` / ``store_connect_timeout`` instead of hanging
them; bad values are refused at load. SQLite's busy timeout is on every connection."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbaccess.broker.settings import BrokerSection, load_settings
from dbaccess.broker.store import Store
from dbaccess.broker.store.database import WRITE_LOCK_KEY
from dbaccess.broker.store.rows import StoreUnavailable
from dbaccess.errors import ConfigError
from dbaccess.sandbox.postgres import PostgresServer
from tests.broker.test_settings import GOOD, write

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("store-timeouts-pg"))
    server.start()
    try:
        with server.connect() as admin:
            admin.execute("CREATE DATABASE broker_store")
        yield server
    finally:
        server.stop()


def _section(server: PostgresServer, port: int | None = None, **timeouts: int) -> BrokerSection:
    return BrokerSection(
        store=f"postgresql+psycopg://{server.admin_user}@127.0.0.1:{port or server.port}"
        "/broker_store",
        store_password_env="DBA_TEST_STORE_PW",
        **timeouts,  # type: ignore[arg-type]
    )


def _timed(call: object, limit: float) -> tuple[BaseException | None, float]:
    """What ``call`` raised and how long it took, or fail after ``limit`` s (a hang)."""
    assert callable(call)
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert outcome, f"still waiting after {limit} s: the store call hangs"
    return outcome[0], time.monotonic() - started


def test_a_write_stuck_behind_a_lock_fails_after_the_statement_timeout(
    store_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBA_TEST_STORE_PW", store_server.admin_password)
    store = Store(_section(store_server, store_statement_timeout=2).store_url())
    try:
        store.probe(datetime.now(UTC))  # it works
        # a replica that took the writers' lock and hangs (a SIGSTOPped process, say)
        with store_server.connect("broker_store") as stuck:
            stuck.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK_KEY,))
            raised, took = _timed(lambda: store.probe(datetime.now(UTC)), limit=20)
        assert isinstance(raised, StoreUnavailable)
        assert "statement timeout" in str(raised)
        assert 1.5 < took < 8
        store.probe(datetime.now(UTC))  # and works again once the lock is gone
    finally:
        store.close()


def test_a_server_that_accepts_and_never_answers_fails_after_the_connect_timeout(
    store_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBA_TEST_STORE_PW", "unused")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads
    try:
        url = _section(store_server, silent.getsockname()[1], store_connect_timeout=2).store_url()
        raised, took = _timed(lambda: Store(url), limit=30)
        assert isinstance(raised, StoreUnavailable), raised
        assert str(raised) == "the broker's state store failed: connection timeout expired"
        assert 1.5 < took < 10
    finally:
        silent.close()


def test_a_timeout_the_url_names_itself_wins(store_server: PostgresServer) -> None:
    section = BrokerSection(
        store=f"postgresql+psycopg://{store_server.admin_user}@127.0.0.1:{store_server.port}/broker_store"
        "?connect_timeout=9&options=-c%20statement_timeout%3D7000"
    )
    url = section.store_url()
    assert url.query["connect_timeout"] == "9"
    assert url.query["options"] == "-c statement_timeout=30000 -c statement_timeout=7000"
    store = Store(url.set(password=store_server.admin_password), migrate=False)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "7s"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('store_connect_timeout = "1s"', "broker.store_connect_timeout: must be between 2s and 5m"),
        ('store_connect_timeout = "1h"', "broker.store_connect_timeout: must be between 2s and 5m"),
        ('store_statement_timeout = "2h"', "broker.store_statement_timeout: must be between 1s"),
        ('store_statement_timeout = "soon"', "broker.store_statement_timeout: 'soon' is not a"),
        (
            "store_statement_timeout = 0",
            "broker.store_statement_timeout: must be between 1s and 1h",
        ),
    ],
)
def test_bad_store_timeouts_are_config_errors(tmp_path: Path, line: str, expected: str) -> None:
    text = GOOD.replace("[broker]\n", f"[broker]\n{line}\n", 1)
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert expected in caught.value.message
    assert caught.value.hint == "fix the key named above"


def test_sqlite_waits_for_another_writer_on_every_connection(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        connections = [store.engine.connect() for _ in range(3)]  # three from the pool
        try:
            waits = [c.exec_driver_sql("PRAGMA busy_timeout").scalar() for c in connections]
        finally:
            for conn in connections:
                conn.close()
        assert waits == [10000, 10000, 10000]
    finally:
        store.close()
