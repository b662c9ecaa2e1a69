"""Webhook notifications for break-glass and approval events.

Each event is POSTed as JSON to every configured URL, with a Slack-compatible ``text``
field next to the structured fields, so one URL can be a Slack/Mattermost incoming webhook
or a SIEM collector. ``send`` only writes the event to the store's outbox (one row per
webhook) and wakes the delivery thread, so an API call never waits for a chat server, and
a crash or restart delays a notification instead of losing it. Deliveries are claimed like
leases, so several broker processes never send one twice; a failed one is retried with
backoff, and after the last attempt it becomes an audit record (``notify.failed``).
Nothing secret is ever in an event, and webhook URLs (which may embed a token) are stored
only as their SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dbaccess import __version__
from dbaccess.broker.outages import Outage
from dbaccess.broker.settings import NotifySection
from dbaccess.broker.store import Store

log = logging.getLogger("dbaccess.broker.notify")

CLAIM_TTL = timedelta(seconds=60)  # longer than one pass over a claimed batch takes
IDLE_POLL = 1.0  # seconds between looks at the outbox when nothing woke the thread


def webhook_id(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


class Notifier:
    def __init__(
        self,
        settings: NotifySection,
        store: Store,
        *,
        owner: str = "broker",
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner
        self._http = http
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, event: str, text: str, **fields: Any) -> None:
        """Put ``event`` in the outbox for every webhook and wake the sender."""
        if not self.settings.webhooks:
            return
        body = {"event": event, "text": chat_text(text), **fields}
        self.store.enqueue_notifications(
            self._clock(), event, body, [webhook_id(url) for url in self.settings.webhooks]
        )
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Run the sender thread (also picks up what an earlier process left undelivered)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dbaccess-notify", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def deliver_due(self) -> int:
        """One pass: send what is due; returns how many were claimed."""
        claimed = self.store.claim_notifications(self._clock(), self.owner, CLAIM_TTL)
        if not claimed:
            return 0
        urls = {webhook_id(url): url for url in self.settings.webhooks}
        http = self._http or httpx.Client(
            timeout=self.settings.timeout.total_seconds(),
            headers={"User-Agent": f"dbaccess-broker/{__version__}"},
        )
        try:
            for row in claimed:
                self._deliver(http, urls.get(row["webhook"]), row)
        finally:
            if self._http is None:
                http.close()
        return len(claimed)

    def _deliver(self, http: httpx.Client, url: str | None, row: dict[str, Any]) -> None:
        error: str | None
        if url is None:
            error = "the webhook is no longer configured"
        else:
            try:
                answer = http.post(
                    url, content=row["body"], headers={"Content-Type": "application/json"}
                )
                error = None if answer.status_code < 300 else f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
        attempt = row["attempts"] + 1
        now = self._clock()
        retry_at = None
        if error is not None and url is not None and attempt < self.settings.attempts:
            retry_at = now + timedelta(seconds=min(2 ** (attempt - 1), 300))
        self.store.settle_notification(row["id"], self.owner, now, error=error, retry_at=retry_at)
        if error is not None and retry_at is None:
            # Log the host only: the URL may embed a token.
            log.error(
                "webhook delivery failed",
                extra={
                    "event": row["event"],
                    "host": httpx.URL(url).host if url else None,
                    "error": error,
                    "attempts": attempt,
                },
            )

    def _run(self) -> None:
        outage = Outage(log, "webhook delivery (reading and settling the outbox)", IDLE_POLL)
        while not self._stop.is_set():
            try:
                while self.deliver_due() and not self._stop.is_set():
                    pass
            except Exception as exc:  # never let one bad pass stop the sender
                outage.failed(exc)  # the store down: one line while it lasts
            else:
                outage.passed()
            self._wake.wait(IDLE_POLL)
            self._wake.clear()


def chat_text(text: str) -> str:
    """``text`` as Slack (and Mattermost, Teams' Slack mode) should show it: ``& < >``
    escaped, so a reason cannot turn into a mention (``<!channel>``) or a disguised link
    (``<https://evil|docs>``), and control characters written visibly."""
    from dbaccess.text import printable

    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
