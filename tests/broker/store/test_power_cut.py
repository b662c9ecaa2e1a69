"""A power cut while the broker hands out sessions (issue 12, point 14): the SQLite store's
disk (a real ext4 on a loop device) is shut down with EXT4_IOC_SHUTDOWN and NOLOGFLUSH —
what is not on the device is dropped — while six clients ask for sessions. Every password
handed out before the cut has its lease active and its grant on the device; every refusal
is the JSON envelope (503 ``store_unavailable``); after a restart on what the device kept,
exactly the users handed out remain. As root; needs mkfs.ext4.

Two things made it fail before (3 of 7 runs passed), one per side:

- the broker: an activation whose commit reported a failure (the fsync's EIO) had landed
  on the device anyway, so the lease was active while its asker got a 503 and the user
  stayed until its expiry, with a password nobody had. A failed activation now drops the
  user at once (services/sessions.py); 2 of 8 runs without that change left such a user.
- the probe: it counted 201s answered while the ioctl ran. The ioctl stops only the disk
  (a real cut takes the broker with it), and an fsync in flight during it may return 0 for
  a commit the shutdown drops: seen once, a 201 3 ms into an 8 ms ioctl whose lease the
  device holds as ``creating``. Only the answers that arrived before the cut began are
  ones a real power cut allows; those are checked, and the racing ones keep their user
  only if the device kept their activation.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess.broker.store import LIVE_STATES
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack
from tests.broker.store.faults import eventually, fault_stack, read_store

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


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = fault_stack(tmp_path_factory.mktemp("powercut"))
    with stack:
        yield stack


def test_power_cut_while_issuing_hands_out_nothing_unrecorded(cut: Stack, tmp_path: Path) -> None:
    people = ["alice", "erin", "bob"]
    headers = {
        p: {"Authorization": "Bearer " + device_tokens(cut.idp, p)["id_token"]} for p in people
    }
    disk = tmp_path / "disk"
    config = cut.broker_config.read_text()
    with ext4_disk(tmp_path / "store.img", disk):
        store_url = f"sqlite:///{disk / 'broker.db'}"
        cut.stop_broker()
        cut.broker_config.write_text(
            config.replace('store = "sqlite:///broker.db"', f'store = "{store_url}"')
        )
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
            # A real power cut takes the broker with it: no answer leaves after the cut. The
            # ioctl stops only the disk, and an fsync in flight while it runs may return 0
            # for a commit the shutdown then drops (seen: a 201 3 ms into an 8 ms ioctl,
            # its lease "creating" on the device). So the durability claim is about the
            # 201s that arrived before the cut began, which are every one a real cut allows.
            before_cut = [body for body in granted if answered_at[body["id"]] < CUT["called"]]
            assert len(before_cut) >= 12, len(before_cut)
            unrecorded = [
                body["id"]
                for body in before_cut
                if body["id"] not in stored
                or stored[body["id"]].state != "active"
                or not {"session.requested", "session.granted"} <= events.get(body["id"], set())
            ]
            assert unrecorded == [], (
                "passwords handed out without a lease and grant on disk: "
                + "; ".join(
                    f"{i}: {stored[i].state if i in stored else 'absent'}, events "
                    f"{sorted(events.get(i, set()))}, answered "
                    f"{answered_at[i] - CUT['returned']:+.3f} s after the ioctl returned "
                    f"(it took {CUT['returned'] - CUT['called']:.3f} s)"
                    for i in unrecorded
                )
            )
            assert all(body["password"] for body in granted)

            # Every user on the database is recorded: handed out, or a lease to revoke.
            live = {row.db_user for row in stored.values() if row.state in LIVE_STATES}
            assert on_the_db <= live, on_the_db - live
            # Those answered while the cut ran keep their user if the device kept their
            # activation, else it is dropped like any lease left "creating".
            handed_out = {
                body["db_user"]
                for body in granted
                if body["id"] in stored and stored[body["id"]].state == "active"
            }
            racing = len(granted) - len(before_cut)
            lost = len(granted) - len(handed_out)  # all while the cut ran (checked above)
            print(
                f"granted {len(before_cut)} before the cut, {racing} while it ran ({lost} "
                f"of those not kept by the device); refused {len(refused)}"
            )
            cut.start_broker()  # on the store as the device kept it
            try:
                eventually(
                    lambda: set(cut.managed_users()) == handed_out,
                    what="the users nobody got a password for to be dropped (their leases revoked)",
                )
            except AssertionError:
                now_on_db = set(cut.managed_users())
                by_user = {row.db_user: row for row in stored.values()}
                after, _ = read_store(store_url)
                after_by_user = {row.db_user: row for row in after.values()}

                def said(user: str) -> str:
                    row, now = by_user.get(user), after_by_user.get(user)
                    log = [
                        line for line in cut.broker_log.read_text().splitlines() if user in line
                    ][-3:]
                    return (
                        f"{user}: on the device {row.state if row else 'no lease'}, "
                        f"after the restart {now.state if now else 'no lease'} "
                        f"({now.last_error if now else ''}); log {log}"
                    )

                raise AssertionError(
                    "after the restart, left: "
                    + "; ".join(map(said, now_on_db - handed_out))
                    + " | handed out but gone: "
                    + "; ".join(map(said, handed_out - now_on_db))
                ) from None
        finally:
            cut.stop_broker()
            cut.broker_config.write_text(config)


answered_at: dict[str, float] = {}  # a 201's lease id: when its answer arrived
CUT: dict[str, float] = {}  # when the ioctl was called and when it returned


def issue_through_a_power_cut(
    stack: Stack, headers: dict[str, dict[str, str]], disk: Path
) -> list[tuple[int, Any]]:
    """Sessions asked for by several people at once; the disk is cut once a dozen are
    granted, and asking goes on for a few seconds. Every answer, in order."""
    answers: list[tuple[int, Any]] = []
    answered_at.clear()
    stop = threading.Event()
    lock = threading.Lock()

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
                        "reason": "durability test",
                    },
                )
                at = time.monotonic()  # the answer is in: the broker sent it before this
                try:
                    body = reply.json()
                except ValueError:
                    body = reply.text  # fails the test: every answer is JSON
                with lock:
                    answers.append((reply.status_code, body))
                    if reply.status_code == 201:
                        answered_at[body["id"]] = at

    askers = [threading.Thread(target=ask, args=(p,)) for p in list(headers) * 2]
    for asker in askers:
        asker.start()
    try:
        eventually(
            lambda: sum(s == 201 for s, _ in answers) >= 12, timeout=60, what="a dozen sessions"
        )
        CUT["called"] = time.monotonic()
        power_cut(disk)
        CUT["returned"] = time.monotonic()
        time.sleep(3)
        # The broker says so: /healthz fails, and a read is the envelope too.
        health = httpx.get(stack.broker_url + "/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["status"] == "failing"
        assert health.json()["store"]["status"] == "failing"
        listing = httpx.get(stack.broker_url + "/v1/sessions", headers=headers["alice"], timeout=10)
        assert listing.status_code == 503
        assert listing.json()["error"]["code"] == "store_unavailable"
    finally:
        stop.set()
        for asker in askers:
            asker.join(timeout=60)
    return answers
