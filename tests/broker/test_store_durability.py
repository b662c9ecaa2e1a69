"""Durable before the password leaves: a lease and its audit records are on stable storage
before the response with the password is sent, and a store that cannot write answers 503.

The store's disk is cut the way a power cut does it: the broker's SQLite store lives on a
real ext4 filesystem (a loop device the test mounts) that is shut down mid-issuance with
``EXT4_IOC_SHUTDOWN`` and ``NOLOGFLUSH`` — whatever had not reached the device is lost, as
on power loss (with ``synchronous=NORMAL`` this test finds handed-out sessions whose lease
is gone). Then the filesystem is mounted again and the store is read from the device.
Needs root (CI runs as root) and mkfs.ext4.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from dbaccess.broker.store import LIVE_STATES, Store, StoreUnavailable, audit, leases
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2  # drop what is not on the device yet: a power cut


@contextmanager
def ext4_disk(image: Path, mountpoint: Path, size_mb: int = 64) -> Iterator[Path]:
    """A fresh ext4 filesystem on a loop device, mounted at ``mountpoint``."""
    assert os.geteuid() == 0, "this test mounts a filesystem: run it as root (CI does)"
    mkfs = shutil.which("mkfs.ext4")
    assert mkfs, "mkfs.ext4 (e2fsprogs) is needed to build the store's disk"
    with image.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run([mkfs, "-q", "-F", str(image)], check=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    mount(image, mountpoint)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def mount(image: Path, mountpoint: Path) -> None:
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)


def unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint):
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def power_cut(mountpoint: Path) -> None:
    fd = os.open(mountpoint, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
    url = (f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:{pg.port}"
           "/durable_store")
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


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own servers: the broker here reconciles every second against its own store.
    stack = Stack(tmp_path_factory.mktemp("powercut"), reaper_interval="1s",
                  reconcile_interval="1s", creation_timeout="2s")
    with stack:
        yield stack


def test_power_cut_while_issuing_hands_out_nothing_unrecorded(
        cut: Stack, tmp_path: Path) -> None:
    people = ["alice", "erin", "bob"]
    headers = {p: {"Authorization": "Bearer " + device_tokens(cut.idp, p)["id_token"]}
               for p in people}
    disk = tmp_path / "disk"
    config = cut.broker_config.read_text()
    with ext4_disk(tmp_path / "store.img", disk):
        store_url = f"sqlite:///{disk / 'broker.db'}"
        cut.stop_broker()
        cut.broker_config.write_text(
            config.replace('store = "sqlite:///broker.db"', f'store = "{store_url}"'))
        try:
            cut.start_broker()
            answers = issue_through_a_power_cut(cut, headers, disk)
            cut.stop_broker()  # SIGTERM, then SIGKILL: nothing more reaches the store
            on_the_db = set(cut.managed_users())

            unmount(disk)
            mount(tmp_path / "store.img", disk)  # what the device holds, nothing else
            granted = [body for status, body in answers if status == 201]
            refused = [body for status, body in answers if status != 201]
            assert len(granted) >= 12 and refused, (len(granted), len(refused))
            assert {status for status, _ in answers} <= {201, 503}, answers
            for body in refused:  # the envelope the CLI shows, not a plain-text 500
                assert isinstance(body, dict) and body["error"]["code"] == "store_unavailable"
                assert "store" in body["error"]["message"] and body["error"]["hint"]

            stored, events = read_store(store_url)
            unrecorded = [
                body["id"] for body in granted
                if body["id"] not in stored or stored[body["id"]].state != "active"
                or not {"session.requested", "session.granted"} <= events.get(body["id"], set())
            ]
            assert unrecorded == [], "passwords handed out without a lease and grant on disk"
            assert all(body["password"] for body in granted)

            # Every user on the database is recorded: handed out, or a lease to revoke.
            live = {row.db_user for row in stored.values() if row.state in LIVE_STATES}
            assert on_the_db <= live, on_the_db - live
            handed_out = {body["db_user"] for body in granted}
            cut.start_broker()  # on the store as the device kept it
            eventually(lambda: set(cut.managed_users()) == handed_out, what="the users "
                       "nobody got a password for to be dropped (their leases revoked)")
        finally:
            cut.stop_broker()
            cut.broker_config.write_text(config)


def read_store(url: str) -> tuple[dict[str, Any], dict[str | None, set[str]]]:
    """Leases by id, and the audit events of each lease, as the store file holds them."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            stored = {row.id: row for row in conn.execute(sa.select(leases))}
            events: dict[str | None, set[str]] = {}
            for lease_id, event in conn.execute(sa.select(audit.c.lease_id, audit.c.event)):
                events.setdefault(lease_id, set()).add(event)
    finally:
        engine.dispose()
    return stored, events


def issue_through_a_power_cut(stack: Stack, headers: dict[str, dict[str, str]],
                              disk: Path) -> list[tuple[int, Any]]:
    """Sessions asked for by several people at once; the disk is cut once a dozen are
    granted, and asking goes on for a few seconds. Every answer, in order."""
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def ask(person: str) -> None:
        with httpx.Client(base_url=stack.broker_url, timeout=60) as http:
            while not stop.is_set():
                reply = http.post("/v1/sessions", headers=headers[person], json={
                    "target": "demo", "role": "readonly", "duration_seconds": 1800,
                    "reason": "durability test"})
                try:
                    body = reply.json()
                except ValueError:
                    body = reply.text  # fails the test: every answer is JSON
                with lock:
                    answers.append((reply.status_code, body))

    askers = [threading.Thread(target=ask, args=(p,)) for p in list(headers) * 2]
    for asker in askers:
        asker.start()
    try:
        eventually(lambda: sum(s == 201 for s, _ in answers) >= 12, timeout=60,
                   what="a dozen sessions")
        power_cut(disk)
        time.sleep(3)
        # The broker says so: /healthz fails, and a read is the envelope too.
        health = httpx.get(stack.broker_url + "/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert health.json()["store"]["status"] == "failing"
        listing = httpx.get(stack.broker_url + "/v1/sessions", headers=headers["alice"],
                            timeout=10)
        assert listing.status_code == 503
        assert listing.json()["error"]["code"] == "store_unavailable"
    finally:
        stop.set()
        for asker in askers:
            asker.join(timeout=60)
    return answers


def test_store_failure_is_store_unavailable_not_a_driver_error(tmp_path: Path) -> None:
    """Every driver failure class the store can meet comes out as one exception."""
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        for raw in (sqlite3.OperationalError("disk I/O error"),
                    sqlite3.DatabaseError("database disk image is malformed"),
                    sa.exc.OperationalError("INSERT ...", {"reason": "x"},
                                            sqlite3.OperationalError("database or disk is full"))):
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
        for raw in (psycopg.OperationalError("connection failed: connection to server at "
                                             '"10.1.2.3", port 5432 failed: FATAL: password '
                                             'authentication failed for user "broker"'),
                    psycopg.errors.DiskFull("could not extend file: No space left on device"),
                    psycopg.InterfaceError("the connection is closed")):
            failure = store._store_failure(raw)
            assert isinstance(failure, StoreUnavailable), raw
            # what callers see names no host or user of the store
            assert "10.1.2.3" not in str(failure) and "broker\"" not in str(failure)
        assert store._store_failure(psycopg.errors.UniqueViolation("dup")) is None
    finally:
        store.close()


def test_an_unexpected_failure_is_the_json_envelope_not_plain_text(
        stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from dbaccess.broker.app import create_app
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
        stack: Stack, tokens: dict[str, str], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dbaccess.broker.app import create_app
    from dbaccess.broker.settings import load_settings

    pg = stack.postgres
    with pg.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS refusing_store")
        admin.execute("CREATE DATABASE refusing_store")
    url = (f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:{pg.port}"
           "/refusing_store")
    store = Store(url)
    alice = {"Authorization": "Bearer " + tokens["alice"]}
    # readwrite needs approvals and a reason: without one, a denial is recorded — a write
    asking = {"target": "demo", "role": "readwrite"}
    try:
        with TestClient(create_app(load_settings(stack.broker_config), store=store,
                                   run_reaper=False)) as api:
            assert api.post("/v1/sessions", headers=alice, json=asking).status_code == 403
            assert api.get("/healthz").status_code == 200
            with pg.connect() as admin:  # the store's server stops taking writes
                admin.execute(
                    "ALTER DATABASE refusing_store SET default_transaction_read_only = on")
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = 'refusing_store' AND pid <> pg_backend_pid()")
            # (the first calls may meet a reader's or the writer's connection terminated:
            # a 503 too, and the next call connects afresh)
            messages = []
            for _ in range(4):
                reply = api.post("/v1/sessions", headers=alice, json=asking)
                assert reply.status_code == 503, reply.text
                assert reply.json()["error"]["code"] == "store_unavailable"
                messages.append(reply.json()["error"]["message"])
            assert "read-only" in messages[-1], messages
            eventually(lambda: api.get("/healthz").status_code == 503, timeout=10,
                       what="/healthz to fail")
            assert api.get("/healthz").json()["store"]["status"] == "failing"
            with pg.connect() as admin:  # back: the next probe and request succeed
                admin.execute("ALTER DATABASE refusing_store RESET default_transaction_read_only")
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = 'refusing_store' AND pid <> pg_backend_pid()")
            eventually(lambda: api.get("/healthz").status_code == 200, timeout=10,
                       what="/healthz to recover")
            assert api.post("/v1/sessions", headers=alice, json=asking).status_code == 403
    finally:
        store.close()
        with pg.connect() as admin:
            admin.execute("DROP DATABASE refusing_store WITH (FORCE)")
