"""Webhook notifications for break-glass and approval events.

Each event is POSTed as JSON to every configured URL, with a Slack-compatible ``text``
field next to the structured fields, so one URL can be a Slack/Mattermost incoming webhook
or a SIEM collector. Sending happens on a background thread, right away, so an API call
never waits for (or fails because of) a slow chat server; failed deliveries are retried
with backoff and then logged as errors. Nothing secret is ever in an event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from dbaccess import __version__
from dbaccess.broker.settings import NotifySection

log = logging.getLogger("dbaccess.broker.notify")


class Notifier:
    def __init__(
        self,
        settings: NotifySection,
        *,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._http = http
        self._sleep = sleep
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def send(self, event: str, text: str, **fields: Any) -> None:
        """Queue ``event`` for every webhook; returns at once."""
        if not self.settings.webhooks:
            return
        body = {"event": event, "text": text, **_jsonable(fields)}
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dbaccess-notify", daemon=True
                )
                self._thread.start()
        self._queue.put(body)

    def flush(self, timeout: float = 10) -> bool:
        """Wait until every queued event was delivered or given up on (for tests and
        shutdown); True when the queue drained in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        if self._thread is not None:
            self.flush(self.settings.timeout.total_seconds() * self.settings.attempts)
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _run(self) -> None:
        http = self._http or httpx.Client(
            timeout=self.settings.timeout.total_seconds(),
            headers={"User-Agent": f"dbaccess-broker/{__version__}"},
        )
        while True:
            body = self._queue.get()
            try:
                if body is None:
                    return
                for url in self.settings.webhooks:
                    self._deliver(http, url, body)
            finally:
                self._queue.task_done()

    def _deliver(self, http: httpx.Client, url: str, body: dict[str, Any]) -> None:
        error = ""
        for attempt in range(1, self.settings.attempts + 1):
            try:
                answer = http.post(url, json=body)
                if answer.status_code < 300:
                    return
                error = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            if attempt < self.settings.attempts:
                self._sleep(min(2 ** (attempt - 1), 30))
        # The URL may embed a token (Slack's do): log only its scheme and host.
        log.error(
            "webhook delivery failed",
            extra={"event": body["event"], "host": httpx.URL(url).host, "error": error},
        )


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()}
