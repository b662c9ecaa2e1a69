"""What the broker writes itself — audit details and webhook bodies — carries its times as
RFC 3339 UTC, the one format of the CLI's JSON (not Python's str(datetime))."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dbaccess.broker.store import Store


def test_audit_details_and_webhook_bodies_write_rfc3339_utc(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    now = datetime(2026, 12, 2, 1, 20, 31, 625719, tzinfo=UTC)
    later = now + timedelta(hours=1)
    store.record(now, "request.created", "alice", {"expires_at": later})
    store.enqueue_notifications(
        now, "request.created", {"expires_at": later}, ["https://chat.example.com/hook"]
    )
    [record] = store.audit_records()
    assert record.detail["expires_at"] == "2026-12-02T02:20:31Z"
    [claimed] = store.claim_notifications(now, "me", timedelta(minutes=1))
    assert json.loads(claimed["body"])["expires_at"] == "2026-12-02T02:20:31Z"
    store.close()
