"""Webhook delivery: JSON with a Slack-compatible text, retries with backoff, failures
logged without the URL (which may carry a token), and never blocking the caller."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import httpx
import pytest

from dbaccess.broker.notify import Notifier
from dbaccess.broker.settings import NotifySection

URL = "https://hooks.example.com/services/T000/B000/secret-token"


def notifier(answers: list[int], sent: list[dict[str, object]], slept: list[float]) -> Notifier:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(answers.pop(0) if answers else 200)

    return Notifier(
        NotifySection(webhooks=[URL], attempts=3, timeout=timedelta(seconds=1)),
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=slept.append,
    )


def test_events_carry_text_and_fields_and_are_retried() -> None:
    sent: list[dict[str, object]] = []
    slept: list[float] = []
    n = notifier([500, 502], sent, slept)
    n.send("breakglass.opened", "BREAK-GLASS: carol opened readwrite on demo", user="carol")
    assert n.flush(5)
    assert [body["event"] for body in sent] == ["breakglass.opened"] * 3
    assert sent[-1]["text"].startswith("BREAK-GLASS") and sent[-1]["user"] == "carol"  # type: ignore[union-attr]
    assert slept == [1, 2]  # backoff between attempts


def test_a_failed_delivery_is_logged_without_its_url(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[dict[str, object]] = []
    n = notifier([500, 500, 500], sent, [])
    with caplog.at_level(logging.ERROR, logger="dbaccess.broker.notify"):
        n.send("request.created", "alice asks for readwrite on demo")
        assert n.flush(5)
    assert len(sent) == 3
    record = caplog.records[-1]
    assert record.getMessage() == "webhook delivery failed"
    assert record.host == "hooks.example.com"  # type: ignore[attr-defined]
    assert "secret-token" not in caplog.text


def test_no_webhooks_no_thread() -> None:
    n = Notifier(NotifySection())
    n.send("request.created", "nobody listens")
    assert n._thread is None
