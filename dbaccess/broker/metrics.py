"""Prometheus metrics of one broker (its own registry, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dbaccess.broker.store import Store

LIVE_SESSIONS = "dbaccess_sessions_live"
LIVE_HELP = (
    "Sessions whose database user may exist (creating, active or revoking), per "
    "target; read from the store at each scrape, so every replica reports the same"
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.issued = Counter(
            "dbaccess_sessions_issued",
            "Sessions issued",
            ["target", "role"],
            registry=self.registry,
        )
        self.denied = Counter(
            "dbaccess_sessions_denied",
            "Requests denied by policy",
            ["target"],
            registry=self.registry,
        )
        self.issue_failures = Counter(
            "dbaccess_issue_failures",
            "Sessions the database failed to create",
            ["target"],
            registry=self.registry,
        )
        self.revoked = Counter(
            "dbaccess_sessions_revoked",
            "Sessions revoked",
            ["target", "cause"],
            registry=self.registry,
        )
        self.revoke_failures = Counter(
            "dbaccess_revoke_failures",
            "Revocation attempts that failed (and will be retried)",
            ["target"],
            registry=self.registry,
        )
        self.refused_unreachable = Counter(
            "dbaccess_requests_refused_unreachable",
            "Session requests and renewals refused at once: their target was known not to "
            "answer (engines/health.py)",
            ["target"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "dbaccess_store_errors",
            "Requests answered 503 because the state store failed",
            registry=self.registry,
        )
        self.idp_unreachable = Counter(
            "dbaccess_idp_unreachable",
            "Tokens that could not be checked: the identity provider's keys could not be "
            "fetched (answered 503)",
            registry=self.registry,
        )
        self.reaper_last_pass = Gauge(
            "dbaccess_reaper_last_pass_timestamp_seconds",
            "When this broker's reaper last finished a pass without an error (Unix time); "
            "a clock that stops is a reaper that is stuck or failing",
            registry=self.registry,
        )
        self.revocation_lag = Histogram(
            "dbaccess_revocation_lag_seconds",
            "Seconds from a session's expiry to the end of its revocation",
            ["target"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
        )

    def watch_live_sessions(self, count: Callable[[], Mapping[str, int]]) -> None:
        """Report ``count()`` (target -> live sessions) as a gauge at each scrape.

        A gauge kept in memory would start at 0 after a restart and differ per replica;
        the store knows the truth for all of them."""
        self.registry.register(_LiveSessions(count))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveSessions(Collector):
    def __init__(self, count: Callable[[], Mapping[str, int]]) -> None:
        self._count = count

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # without describe(), registering would already run the query
        yield GaugeMetricFamily(LIVE_SESSIONS, LIVE_HELP, labels=["target"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(LIVE_SESSIONS, LIVE_HELP, labels=["target"])
        for target, live in sorted(self._count().items()):
            family.add_metric([target], live)
        yield family


def live_sessions_by_target(store: Store, targets: list[str]) -> dict[str, int]:
    """Live leases per target: every configured target (0 if none), and any other target
    that still has some (removed from the configuration, its sessions not yet revoked)."""
    import sqlalchemy as sa

    from dbaccess.broker.store import LIVE_STATES, leases

    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(leases.c.target, sa.func.count())
            .where(leases.c.state.in_(LIVE_STATES))
            .group_by(leases.c.target)
        ).all()
    return {**dict.fromkeys(targets, 0), **{str(row[0]): int(row[1]) for row in rows}}
