"""Prometheus metrics of one broker (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


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
        self.revocation_lag = Histogram(
            "dbaccess_revocation_lag_seconds",
            "Seconds from a session's expiry to the end of its revocation",
            ["target"],
            registry=self.registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
