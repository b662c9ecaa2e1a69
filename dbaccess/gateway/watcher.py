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


def reason_for(state: str | None, cause: str | None) -> str:
    """What the client is told: worded for the person whose session it was."""
    if state is None:
        return "the session no longer exists"
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
        self._outage = Outage(log, "reading the standing of live gateway sessions", interval)
        self._thread = threading.Thread(target=self._run, name="gateway-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self) -> int:
        """One pass: end the sessions that are over; how many were ended."""
        open_ = self.live.leases()
        for gone in set(self.expiry) - set(open_):
            del self.expiry[gone]
        if not open_:
            return 0
        ended = 0
        now = self.clock()
        try:
            standing = self._standing(open_)
        except Exception as exc:  # the store is down: the clock still ends expired ones
            self._outage.failed(exc)
            standing = None
        else:
            self._outage.passed()
        for lease_id in open_:
            if standing is not None:
                found = standing.get(lease_id)
                if found is None:
                    ended += self._end(lease_id, reason_for(None, None))
                    continue
                state, expires_at, cause = found
                if state != "active":
                    ended += self._end(lease_id, reason_for(state, cause))
                    continue
                self.expiry[lease_id] = expires_at
            end = self.expiry.get(lease_id)
            if end is not None and end <= now:
                ended += self._end(lease_id, reason_for("revoking", "expired"))
        return ended

    def _end(self, lease_id: str, reason: str) -> int:
        count = self.live.end(lease_id, reason)
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

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # never let the one revocation thread die
                log.exception("gateway: the revocation pass failed")
