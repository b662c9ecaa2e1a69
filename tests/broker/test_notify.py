"""Webhook delivery through the store's outbox: JSON with a Slack-compatible text, retries
with backoff, nothing lost across a restart, never sent twice by two processes, failures
recorded without the URL (which may carry a token)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dbaccess.broker.notify import Notifier, webhook_id
from dbaccess.broker.settings import NotifySection
from dbaccess.broker.store import Store
from dbaccess.broker.store.audit_chain import raw_records, verify

URL = "https://hooks.example.com/services/T000/B000/secret-token"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def hook(answers: list[int], sent: list[dict[str, object]]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(answers.pop(0) if answers else 200)

    return httpx.Client(transport=httpx.MockTransport(handler))


def notifier(store: Store, http: httpx.Client, clock: Clock, owner: str = "a") -> Notifier:
    settings = NotifySection(webhooks=[URL], attempts=3, timeout=timedelta(seconds=1))
    return Notifier(settings, store, owner=owner, http=http, clock=clock)


@pytest.fixture(autouse=True)
def passes_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sender thread: each test drives delivery passes itself, deterministically."""
    monkeypatch.setattr(Notifier, "start", lambda self: None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'outbox.db'}")


def test_events_carry_text_and_fields_and_are_retried_with_backoff(store: Store) -> None:
    sent: list[dict[str, object]] = []
    clock = Clock()
    n = notifier(store, hook([500, 502], sent), clock)
    # (the sender thread is not started here: passes are driven by hand)
    store.enqueue_notifications(
        clock(),
        "breakglass.opened",
        {"event": "breakglass.opened", "text": "BREAK-GLASS: carol on demo", "user": "carol"},
        [webhook_id(URL)],
    )
    assert n.deliver_due() == 1 and len(sent) == 1  # HTTP 500: retry in 1 s
    assert n.deliver_due() == 0  # not yet due
    clock.now += timedelta(seconds=1)
    assert n.deliver_due() == 1 and len(sent) == 2  # 502: retry in 2 s
    clock.now += timedelta(seconds=2)
    assert n.deliver_due() == 1 and len(sent) == 3
    assert store.pending_notifications() == 0
    assert sent[-1] == {
        "event": "breakglass.opened",
        "text": "BREAK-GLASS: carol on demo",
        "user": "carol",
    }


def test_nothing_is_lost_across_a_restart_and_nothing_is_sent_twice(store: Store) -> None:
    clock = Clock()
    down: list[dict[str, object]] = []
    first = notifier(store, hook([503], down), clock, owner="replica-1")
    first.settings = first.settings.model_copy(update={"attempts": 5})
    first.send("request.created", "alice asks for readwrite on demo", request_id="r1")
    first.deliver_due()  # the chat server is down; then this broker process dies
    assert store.pending_notifications() == 1

    clock.now += timedelta(seconds=5)
    sent: list[dict[str, object]] = []
    second = notifier(store, hook([], sent), clock, owner="replica-2")
    third = notifier(store, hook([], sent), clock, owner="replica-3")
    assert second.deliver_due() == 1
    assert third.deliver_due() == 0  # already delivered by the other process
    assert [e["request_id"] for e in sent] == ["r1"]
    assert store.pending_notifications() == 0


def test_the_last_failure_is_audited_and_logged_without_the_url(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    n = notifier(store, hook([500, 500, 500], []), clock)
    n.send("request.denied", "frank denied alice's request")
    with caplog.at_level(logging.ERROR, logger="dbaccess.broker.notify"):
        for _ in range(3):
            n.deliver_due()
            clock.now += timedelta(seconds=10)
    assert store.pending_notifications() == 0
    record = caplog.records[-1]
    assert record.getMessage() == "webhook delivery failed"
    assert record.host == "hooks.example.com"  # type: ignore[attr-defined]
    assert "secret-token" not in caplog.text
    failed = [r for r in store.audit_records(limit=10) if r.event == "notify.failed"]
    assert failed and failed[0].detail["event"] == "request.denied"
    assert verify(raw_records(store)).ok
    with store.engine.connect() as conn:  # the URL's token never reached the store
        dump = "\n".join(conn.connection.driver_connection.iterdump())  # type: ignore[union-attr]
    assert "secret-token" not in dump


def test_no_webhooks_nothing_stored(store: Store) -> None:
    n = Notifier(NotifySection(), store)
    n.send("request.created", "nobody listens")
    assert store.pending_notifications() == 0


def test_chat_text_cannot_mention_everyone_disguise_a_link_or_drive_a_terminal(
    store: Store,
) -> None:
    sent: list[dict[str, object]] = []
    n = notifier(store, hook([], sent), Clock())
    n.send(
        "request.created",
        "alice asks: <!channel> see <https://evil.example|the runbook> & \x1b]0;pwned\x07",
        reason="raw fields stay as they are",
    )
    assert n.deliver_due() == 1
    assert sent[-1]["text"] == (
        "alice asks: &lt;!channel&gt; see "
        "&lt;https://evil.example|the runbook&gt; &amp; \\x1b]0;pwned\\x07"
    )
    assert sent[-1]["reason"] == "raw fields stay as they are"
