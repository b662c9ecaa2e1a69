"""Revocation at the gateway: a session's connections end within a second of its lease
leaving ``active`` (revoked by a person or the broker, expired), with FATAL 57P01 and the
reason, whether or not the database or the broker's API can be reached.

One thread per gateway process reads the standing of the leases that have connections
open, a single store query every ``interval``. A lease past its expiry is ended from the
gateway's own clock too, so an unreachable store delays nothing that was already known.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from dbaccess.broker.outages import Outage
from dbaccess.gateway.sessions import LiveConnections

log = logging.getLogger("dbaccess.gateway")

Standing = Mapping[str, tuple[str, datetime, str | None]]


# A lease the store calls active whose binding (store_directory.py) does not hold.
UNBOUND = "unbound"


def reason_for(state: str | None, cause: str | None) -> str:
    """What the client is told: worded for the person whose session it was."""
    if state is None:
        return "the session no longer exists"
    if state == UNBOUND:
        return "the session's record was changed outside the broker"
    if cause == "expired":
        return "the session expired"
    return f"the session was revoked ({cause or state})"


class RevocationWatcher:
    def __init__(
        self,
        live: LiveConnections,
        standing: Callable[[list[str]], Standing],
        *,
        interval: float = 0.25,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.live = live
        self._standing = standing
        self.interval = interval
        self.clock = clock
        self.expiry: dict[str, datetime] = {}  # lease -> its end as last read
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outage = Outage(log, "reading the standing of live gateway sessions", interval)
        # Two threads: a store that hangs holds up the store's pass only, never the clock's.
        self._threads = [
            threading.Thread(target=self._run, args=(pass_,), name=name, daemon=True)
            for pass_, name in (
                (self.check_store, "gateway-watcher-store"),
                (self.check_clock, "gateway-watcher-clock"),
            )
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def expect(self, lease_id: str, expires_at: datetime | None) -> None:
        """What the directory read when a client came in: its end is known before the
        first pass (a store down from then on still lets the clock end the session)."""
        if expires_at is not None:
            with self._lock:
                self.expiry.setdefault(lease_id, expires_at)

    def check(self) -> int:
        """One pass: end the sessions that are over; how many were ended."""
        return self.check_store() + self.check_clock()

    def check_store(self) -> int:
        """End the sessions the store says are no longer active; learn the others' ends."""
        open_ = self.live.leases()
        with self._lock:
            for gone in set(self.expiry) - set(open_):
                del self.expiry[gone]
        if not open_:
            return 0
        try:
            standing = self._standing(open_)
        except Exception as exc:  # the store is down: the clock thread still ends them
            self._outage.failed(exc)
            return 0
        self._outage.passed()
        ended = 0
        for lease_id in open_:
            found = standing.get(lease_id)
            if found is None:
                ended += self._end(lease_id, reason_for(None, None))
                continue
            state, expires_at, cause = found
            if state != "active":
                ended += self._end(lease_id, reason_for(state, cause))
                continue
            with self._lock:
                self.expiry[lease_id] = expires_at
        return ended

    def check_clock(self) -> int:
        """End the sessions whose end, as last read, has passed."""
        now = self.clock()
        with self._lock:
            due = [lease for lease, end in self.expiry.items() if end <= now]
        return sum(self._end(lease, reason_for("revoking", "expired")) for lease in due)

    def _end(self, lease_id: str, reason: str) -> int:
        count = self.live.end(lease_id, reason)
        with self._lock:
            self.expiry.pop(lease_id, None)
        if count:
            log.info(
                "gateway: ended %d connection(s) of lease %s: %s",
                count,
                lease_id,
                reason,
                extra={"lease_id": lease_id},
            )
        return 1 if count else 0

    def _run(self, pass_: Callable[[], int]) -> None:
        while not self._stop.wait(self.interval):
            try:
                pass_()
            except Exception:  # never let the one revocation thread die
                log.exception("gateway: the revocation pass failed")
