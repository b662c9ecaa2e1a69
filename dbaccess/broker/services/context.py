"""What every service works with: the broker's context (``BrokerContext``), and where a call
came from (``Origin``, plain data: api/deps.py reads it off the HTTP request)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from dbaccess.broker.engines import Engine
from dbaccess.broker.metrics import Metrics
from dbaccess.broker.notify import Notifier
from dbaccess.broker.oncall import Schedules
from dbaccess.broker.settings import Settings
from dbaccess.broker.store import Store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class BrokerContext:
    """The broker's state the services share. A reload swaps ``settings`` here, once, and
    replaces changed targets' ``engines`` in place; the services read both at each use."""

    settings: Settings
    store: Store
    engines: dict[str, Engine]
    clock: Callable[[], datetime]
    metrics: Metrics
    notifier: Notifier
    # Names this process in lease claims, so replicas sharing a store never revoke the
    # same lease at once.
    replica: str
    # GET /metrics wants it as a bearer token when set ([broker] metrics_token_env/_file)
    metrics_token: bytes | None = None
    _schedules: tuple[object, Schedules] | None = None

    @property
    def schedules(self) -> Schedules:
        """The on-call look-up of the current settings (made again after a reload)."""
        if self._schedules is None or self._schedules[0] is not self.settings.oncall:
            self._schedules = (self.settings.oncall, Schedules(self.settings.oncall))
        return self._schedules[1]

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: Store,
        engines: Mapping[str, Engine],
        *,
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
    ) -> BrokerContext:
        # claimed_by is 64 characters: a cloud host name (49 and more) and a long pid
        # would overflow it, and every claim would fail on a PostgreSQL store
        replica = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return cls(
            settings=settings,
            store=store,
            engines=dict(engines),
            clock=clock,
            metrics=metrics or Metrics(),
            notifier=notifier or Notifier(settings.notify, store, owner=replica),
            replica=replica,
        )


@dataclass(frozen=True)
class Origin:
    """Where an API call came from, for the audit trail."""

    source: str | None = None
    user_agent: str | None = None
    received_at: float | None = None  # time.monotonic() at arrival (target_guard's deadline)
    client_timeout: float | None = None  # how long the client waits (Dbaccess-Timeout)

    def detail(self) -> dict[str, str | None]:
        return {"source": self.source, "user_agent": self.user_agent}
