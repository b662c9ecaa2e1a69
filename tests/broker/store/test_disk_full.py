"""The broker's SQLite store on a disk that fills up while people ask for sessions (issue
12, point 14): no password leaves without its lease and grant on the store's file, a store
that cannot write answers with the JSON envelope (503 ``store_unavailable``) and /healthz
says so, and once there is room again the broker recovers by itself, without a restart:
/healthz is ok, sessions are granted, and the database users made for leases that could not
be activated (nobody holds their password) are dropped.

The disk is a small tmpfs mounted for the test (as root: CI runs as root). A read-only
cut is not tested here: ``mount -o remount,ro`` refuses (EBUSY) while the broker holds the
store open for writing, and making a loop device read-only under ext4 (``blockdev
--setro``) fails the journal and fsync asynchronously: tests/broker/store/test_power_cut.py
covers that kind of failure.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack
from tests.broker.store.faults import eventually, fault_stack, read_store

pytestmark = pytest.mark.integration

PEOPLE = ("alice", "erin", "bob")
DISK_MB = 16


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A small filesystem of its own (tmpfs) for the broker's store."""
    assert os.geteuid() == 0, (
        "this test mounts a small filesystem for the broker's store: run it as root (CI does)"
    )
    mountpoint = tmp_path_factory.mktemp("store-disk")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0700", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture(scope="module")
def full_disk_stack(tmp_path_factory: pytest.TempPathFactory, disk: Path) -> Iterator[Stack]:
    stack = fault_stack(tmp_path_factory.mktemp("diskfull"))
    with stack:
        stack.stop_broker()
        config = stack.broker_config.read_text()
        assert 'store = "sqlite:///broker.db"' in config
        stack.broker_config.write_text(
            config.replace(
                'store = "sqlite:///broker.db"', f'store = "sqlite:///{disk / "broker.db"}"'
            )
        )
        stack.start_broker()
        yield stack


class Filler:
    """Takes every free byte of a filesystem, and keeps taking whatever is freed (SQLite
    may truncate a file), until ``release``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_full, daemon=True)
        self.full = threading.Event()

    def _fill(self, fd: int) -> None:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 16 or 1]

    def _keep_full(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._stop.is_set():
                self._fill(fd)
                self.full.set()
                self._stop.wait(0.02)
        finally:
            os.close(fd)

    def start(self) -> None:
        self._thread.start()
        assert self.full.wait(30), "the filler could not fill the store's disk"

    def release(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.path.unlink()


def fill_while_users_wait_for_activation(
    store: Path, filler: Filler, stack: Stack, answered: Callable[[], set[str]]
) -> int:
    """Fill the disk at the moment the case that matters most is under way: a database
    user created, its lease not active yet. The test takes the store's write lock, so every
    asker stops at its next store write; once some has its user on the database (it waits
    to activate the lease), the disk is filled, then the lock let go. The WAL is truncated
    first: a WAL file restarted after a checkpoint is overwritten in place, room SQLite
    would have without the filesystem's."""
    tried = []
    for attempt in range(1, 11):
        holder = sqlite3.connect(store, isolation_level=None, timeout=30)
        try:
            busy, _, _ = holder.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            tried.append(f"busy {busy}")
            if busy:
                continue
            holder.execute("BEGIN IMMEDIATE")
            time.sleep(0.5)  # answers on their way when the lock was taken arrive
            waiting: set[str] = set()
            for _ in range(10):
                now_waiting = set(stack.managed_users()) - answered()
                if now_waiting and now_waiting == waiting:
                    filler.start()
                    return attempt
                waiting = now_waiting
                tried.append(str(sorted(waiting)))
                time.sleep(0.5)
        finally:
            holder.close()  # rolls back: the test wrote nothing
        time.sleep(1)  # the askers go on; the next try catches them elsewhere
    raise AssertionError(f"no asker was ever caught between its user and its activation: {tried}")


def assert_store_unavailable(reply: httpx.Response) -> None:
    assert reply.status_code == 503, (reply.status_code, reply.text)
    error = reply.json()["error"]
    assert error["code"] == "store_unavailable", error
    assert "store" in error["message"] and error["hint"], error


def test_a_full_disk_hands_out_nothing_unrecorded_and_the_broker_recovers(
    full_disk_stack: Stack, disk: Path
) -> None:
    stack = full_disk_stack
    store_url = f"sqlite:///{disk / 'broker.db'}"
    headers = {
        p: {"Authorization": "Bearer " + device_tokens(stack.idp, p)["id_token"]} for p in PEOPLE
    }
    answers: list[tuple[int, Any]] = []
    owner: dict[str, str] = {}  # session id -> who got it
    lock = threading.Lock()
    stop = threading.Event()

    def ask(person: str) -> None:
        with httpx.Client(base_url=stack.broker_url, timeout=60) as http:
            while not stop.is_set():
                reply = http.post(
                    "/v1/sessions",
                    headers=headers[person],
                    json={
                        "target": "demo",
                        "role": "readonly",
                        "duration_seconds": 1800,
                        "reason": "disk full test",
                    },
                )
                try:
                    body = reply.json()
                except ValueError:
                    body = reply.text  # fails the test below: every answer is JSON
                with lock:
                    answers.append((reply.status_code, body))
                    if reply.status_code == 201:
                        owner[body["id"]] = person

    def granted() -> list[dict[str, Any]]:
        with lock:
            return [body for status, body in answers if status == 201]

    filler = Filler(disk)
    askers = [threading.Thread(target=ask, args=(p,), daemon=True) for p in PEOPLE * 2]
    for asker in askers:
        asker.start()
    try:
        eventually(lambda: len(granted()) >= 12, timeout=90, what="a dozen sessions")
        started = time.monotonic()
        attempts = fill_while_users_wait_for_activation(
            disk / "broker.db", filler, stack, lambda: {body["db_user"] for body in granted()}
        )
        at_the_fill = len(granted())
        took = time.monotonic() - started
        eventually(
            lambda: httpx.get(stack.broker_url + "/healthz", timeout=30).status_code == 503,
            timeout=30,
            what="/healthz to report the full disk",
        )
        time.sleep(3)  # asking goes on against a full disk

        # While it is full: /healthz fails on the store; a write other than an issuance
        # (a revocation) is refused with the envelope, and nothing is revoked.
        health = httpx.get(stack.broker_url + "/healthz", timeout=30)
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "failing"
        assert health.json()["store"]["status"] == "failing"
        assert "store" in health.json()["store"]["error"]
        listing = httpx.get(
            stack.broker_url + "/v1/sessions", headers=headers["alice"], timeout=30
        )  # a read: answered, or refused with the envelope
        if listing.status_code != 200:
            assert_store_unavailable(listing)
        some = granted()[0]
        assert_store_unavailable(
            httpx.delete(
                f"{stack.broker_url}/v1/sessions/{some['id']}",
                headers=headers[owner[some["id"]]],
                timeout=30,
            )
        )
    finally:
        stop.set()
        for asker in askers:
            asker.join(timeout=90)
    assert not any(asker.is_alive() for asker in askers), "a request hung on the full disk"

    try:
        not_json = [(status, body) for status, body in answers if not isinstance(body, dict)]
        assert not_json == [], "answers that are not the JSON envelope"
        assert {status for status, _ in answers} <= {201, 503}, {s for s, _ in answers}
        handed = granted()
        refused = [body for status, body in answers if status == 503]
        assert len(handed) >= 12 and refused, (len(handed), len(refused))
        for body in refused:
            assert body["error"]["code"] == "store_unavailable", body
            assert "store" in body["error"]["message"] and body["error"]["hint"], body
    finally:
        filler.release()

    # Every password handed out has its lease (active) and its grant on the file. Read
    # once there is room (a reader of a WAL store needs to write its -shm file): a commit
    # that failed was rolled back, room does not bring it back.
    stored, events = read_store(store_url)
    unrecorded = [
        body["id"]
        for body in handed
        if body["id"] not in stored
        or stored[body["id"]].state != "active"
        or not {"session.requested", "session.granted"} <= events.get(body["id"], set())
    ]
    assert unrecorded == [], "passwords handed out without a lease and grant on the store"
    assert all(body["password"] for body in handed)

    # Room again: the broker recovers by itself, without a restart.
    eventually(
        lambda: httpx.get(stack.broker_url + "/healthz", timeout=30).status_code == 200,
        what="/healthz to be ok once the disk has room",
    )
    handed_out = {body["db_user"] for body in handed}
    eventually(
        lambda: set(stack.managed_users()) == handed_out,
        what="the users nobody got a password for to be dropped (their leases revoked)",
    )
    again = httpx.post(
        stack.broker_url + "/v1/sessions",
        headers=headers["alice"],
        json={
            "target": "demo",
            "role": "readonly",
            "duration_seconds": 600,
            "reason": "disk has room again",
        },
        timeout=30,
    )
    assert again.status_code == 201, again.text
    revoked = httpx.delete(
        f"{stack.broker_url}/v1/sessions/{some['id']}",
        headers=headers[owner[some["id"]]],
        timeout=30,
    )
    assert revoked.status_code == 200, revoked.text
    assert set(stack.managed_users()) == handed_out - {some["db_user"]} | {again.json()["db_user"]}
    stored, events = read_store(store_url)
    interrupted = [
        row.db_user for row in stored.values() if row.revoke_cause == "creation_interrupted"
    ]
    print(
        f"filled at try {attempts} ({took:.1f} s); granted {at_the_fill} before the fill "
        f"and {len(handed) - at_the_fill} after, refused {len(refused)}, users made for no "
        f"one and dropped {len(interrupted)}"
    )
    # The disk filled while some askers were between "user created" and "lease active":
    # the case the recovery checks are about.
    assert interrupted, "no lease was caught between its user and its activation"
    stuck = [row.id for row in stored.values() if row.state in ("creating", "revoking")]
    assert stuck == [], "leases left half-made or half-revoked"
