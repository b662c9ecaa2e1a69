"""What the store's fault tests (a full disk, a power cut, a store refusing writes) share:
waiting for the broker to get somewhere, and reading the store's file as the disk kept it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from dbaccess.broker.store import audit, leases


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
