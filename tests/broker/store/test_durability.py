"""Durable before the password leaves: the SQLite store syncs every commit and a PostgreSQL
store never runs with synchronous_commit off; a store that cannot write answers 503 in the
envelope and /healthz says so. (Cutting the store's disk mid-issuance:
tests/broker/store/test_power_cut.py.)
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbaccess.broker.store import Store, StoreUnavailable
from dbaccess.sandbox.stack import Stack
from tests.broker.store.faults import eventually

pytestmark = pytest.mark.integration


def test_sqlite_store_syncs_every_commit(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        store.probe(datetime.now(UTC))
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert store._writer is not None
        writer = store._writer.connection.driver_connection
        assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # type: ignore[union-attr]
    finally:
        store.close()


def test_postgres_store_never_runs_with_synchronous_commit_off(stack: Stack) -> None:
    pg = stack.postgres
    with pg.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS durable_store")
        admin.execute("CREATE DATABASE durable_store")
        # an operator's "speed-up": COMMIT acknowledged before it is on disk
        admin.execute("ALTER DATABASE durable_store SET synchronous_commit = off")
    url = (
        f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:{pg.port}"
        "/durable_store"
    )
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        with pg.connect() as admin:  # a durable setting of the operator's is kept
            admin.execute("ALTER DATABASE durable_store SET synchronous_commit = remote_apply")
        store.engine.dispose()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "remote_apply"
    finally:
        store.close()
        with pg.connect() as admin:
            admin.execute("DROP DATABASE durable_store")


def test_store_failure_is_store_unavailable_not_a_driver_error(tmp_path: Path) -> None:
    """Every driver failure class the store can meet comes out as one exception."""
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        for raw in (
            sqlite3.OperationalError("disk I/O error"),
            sqlite3.DatabaseError("database disk image is malformed"),
            sa.exc.OperationalError(
                "INSERT ...", {"reason": "x"}, sqlite3.OperationalError("database or disk is full")
            ),
        ):
            failure = store._store_failure(raw)
            assert isinstance(failure, StoreUnavailable)
            assert "INSERT" not in str(failure) and "reason" not in str(failure)
        assert store._store_failure(sqlite3.IntegrityError("UNIQUE")) is None
        assert store._store_failure(ValueError("x")) is None
    finally:
        store.close()


def test_postgres_store_failures_are_store_unavailable_too() -> None:
    import psycopg

    store = Store("postgresql+psycopg://broker@127.0.0.1:1/none", migrate=False)  # no connect
    try:
        for raw in (
            psycopg.OperationalError(
                "connection failed: connection to server at "
                '"10.1.2.3", port 5432 failed: FATAL: password '
                'authentication failed for user "broker"'
            ),
            psycopg.errors.DiskFull("could not extend file: No space left on device"),
            psycopg.InterfaceError("the connection is closed"),
        ):
            failure = store._store_failure(raw)
            assert isinstance(failure, StoreUnavailable), raw
            # what callers see names no host or user of the store
            assert "10.1.2.3" not in str(failure) and 'broker"' not in str(failure)
        assert store._store_failure(psycopg.errors.UniqueViolation("dup")) is None
    finally:
        store.close()


def test_an_unexpected_failure_is_the_json_envelope_not_plain_text(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from dbaccess.broker.api.app import create_app
    from dbaccess.broker.settings import load_settings

    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    app = create_app(load_settings(stack.broker_config), store=store, run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as api:

        def broken(**_: object) -> None:
            raise StoreUnavailable("the broker's state store failed: disk I/O error")

        monkeypatch.setattr(store, "health", lambda **_: None)
        assert api.get("/healthz").json()["store"] == {"status": "ok"}
        monkeypatch.setattr(store, "health", lambda **_: "the broker's state store failed: x")
        reply = api.get("/healthz")
        assert reply.status_code == 503 and reply.json()["store"]["status"] == "failing"
        monkeypatch.setattr(store, "health", broken)
        reply = api.get("/healthz")
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "store_unavailable"
        monkeypatch.setattr(store, "health", lambda **_: 1 / 0)
        reply = api.get("/healthz")
        assert reply.status_code == 500
        assert reply.json()["error"]["code"] == "internal_error"
        assert "ZeroDivisionError" in reply.json()["error"]["message"]
    store.close()


def test_a_postgres_store_that_refuses_writes_is_a_503_and_a_failing_healthz(
    stack: Stack, tokens: dict[str, str], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from dbaccess.broker.api.app import create_app
    from dbaccess.broker.settings import load_settings

    pg = stack.postgres
    with pg.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS refusing_store")
        admin.execute("CREATE DATABASE refusing_store")
    url = (
        f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:{pg.port}"
        "/refusing_store"
    )
    store = Store(url)
    alice = {"Authorization": "Bearer " + tokens["alice"]}
    # readwrite needs approvals and a reason: without one, a denial is recorded — a write
    asking = {"target": "demo", "role": "readwrite"}
    try:
        with TestClient(
            create_app(load_settings(stack.broker_config), store=store, run_reaper=False)
        ) as api:
            assert api.post("/v1/sessions", headers=alice, json=asking).status_code == 403
            assert api.get("/healthz").status_code == 200
            with pg.connect() as admin:  # the store's server stops taking writes
                admin.execute(
                    "ALTER DATABASE refusing_store SET default_transaction_read_only = on"
                )
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'refusing_store' AND pid <> pg_backend_pid()"
                )
            # (the first calls may meet a reader's or the writer's connection terminated:
            # a 503 too, and the next call connects afresh)
            messages = []
            for _ in range(4):
                reply = api.post("/v1/sessions", headers=alice, json=asking)
                assert reply.status_code == 503, reply.text
                assert reply.json()["error"]["code"] == "store_unavailable"
                messages.append(reply.json()["error"]["message"])
            assert "read-only" in messages[-1], messages
            eventually(
                lambda: api.get("/healthz").status_code == 503, timeout=10, what="/healthz to fail"
            )
            assert api.get("/healthz").json()["store"]["status"] == "failing"
            with pg.connect() as admin:  # back: the next probe and request succeed
                admin.execute("ALTER DATABASE refusing_store RESET default_transaction_read_only")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'refusing_store' AND pid <> pg_backend_pid()"
                )
            eventually(
                lambda: api.get("/healthz").status_code == 200,
                timeout=10,
                what="/healthz to recover",
            )
            assert api.post("/v1/sessions", headers=alice, json=asking).status_code == 403
    finally:
        store.close()
        with pg.connect() as admin:
            admin.execute("DROP DATABASE refusing_store WITH (FORCE)")
