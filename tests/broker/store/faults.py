"""What the store's fault tests (a full disk, a power cut, a store refusing writes) share:
waiting for the broker to get somewhere, and reading the store's file as the disk kept it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dbaccess.broker.store import audit, leases
from dbaccess.sandbox.stack import SANDBOX_LIMITS, Stack


def fault_stack(directory: Path) -> Stack:
    """A stack of its own servers for a test that breaks the store: the broker reaps and
    reconciles every second against its own store and gives up on a lease still
    "creating" after 2 s; caps high enough never to answer (429) in place of the store
    (with the sandbox's 32 sessions on the target, a test hit them before its fault)."""
    limits = dict(
        SANDBOX_LIMITS,
        sessions_per_person=400,
        connections_per_person=2000,
        sessions_per_target=1200,
        connections_per_target=6000,
    )
    return Stack(
        directory,
        reaper_interval="1s",
        reconcile_interval="1s",
        creation_timeout="2s",
        limits=limits,
    )


def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "it") -> None:
    """Poll ``check`` until it holds; fail the test naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


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
