"""Per-target health: a circuit breaker, so calls naming a target known to be down fail
at once instead of each waiting out the call's timeout (docs/broker.md, "When a database
fails").

States, per target and per broker process:

- **answering** (closed): every call goes through;
- **unreachable** (open): a call failed for want of an answer (connect or read timeout, a
  refused or broken connection: ``TargetUnreachable``). For ``DOWN_WINDOW`` seconds after
  the last such failure, calls that would make or change a user are refused without
  trying (the API's ``503 target_unreachable``), except **one probe at a time**, let
  through to find out whether the target is back. While the reaper pings the target,
  that ping is the probe. A probe that never reports frees its slot after ``PROBE_LAPSE``.

Any answer from the target (a success, or an error the database itself gave) closes the
breaker at once; another failure to answer restarts the window. The engine's own calls
report both ways, the reaper's pings included: while a target does not answer the reaper
pings it every second or so (each failing ping, ~5 s on a stopped PostgreSQL, ~10 s on a
stopped MariaDB, restarts the window), so its return closes the breaker within about a
second whether or not a caller probes. Without any report for the window, calls go through
again. Revocations are never refused here: the reaper skips a target that is down and
revokes its due leases as soon as it answers again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dbaccess.broker.engines.base import CALL_TIMEOUT, CreateSlots

# Seconds a target counts as unreachable after its last failure to answer: longer than the
# reaper's ping cycle on a stopped target (a failing ping takes up to 10 s, then 1 s pause),
# so a continued outage stays known; an answer ends it at once.
DOWN_WINDOW = 15.0
# A probe holds its slot at most this long (a creation waits up to 3 s for a slot, then
# the call up to CALL_TIMEOUT): one that never reports (a bug, a crash of its thread)
# cannot keep every later caller refused.
PROBE_LAPSE = CreateSlots.WAIT_SECONDS + CALL_TIMEOUT + 2.0


@dataclass(frozen=True)
class Down:
    """Why and since when a target counts as down (for the refusal's message)."""

    reason: str
    seconds_ago: float  # since the first failure of this outage


class Admission:
    """A call let through: ``probe`` if the target was down (release it when done)."""

    def __init__(self, health: TargetHealth | None, probe: bool) -> None:
        self._health = health
        self.probe = probe

    def release(self) -> None:
        if self.probe and self._health is not None:
            self._health._end_probe(self)
            self._health = None


class TargetHealth:
    def __init__(
        self,
        target: str,
        *,
        window: float = DOWN_WINDOW,
        probe_lapse: float = PROBE_LAPSE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self._window = window
        self._probe_lapse = probe_lapse
        self._clock = clock
        self._lock = threading.Lock()
        self._failed_at: float | None = None  # the last failure to answer; None: answering
        self._since: float | None = None  # the first failure of this outage
        self._reason = ""
        self._probe: Admission | None = None
        self._probe_until = 0.0
        self._pings = 0  # pings under way (the reaper's): they are the probe

    @property
    def down(self) -> bool:
        """A call failed for want of an answer and nothing answered since."""
        return self._failed_at is not None

    def failed(self, reason: str) -> None:
        """A call got no answer (timeout, refused or broken connection)."""
        with self._lock:
            now = self._clock()
            if self._failed_at is None:
                self._since = now
            self._failed_at = now
            self._reason = reason

    def answered(self) -> None:
        """The target answered a call (with a result or with an error of its own)."""
        with self._lock:
            self._failed_at = self._since = None
            self._reason = ""

    def admit(self) -> Admission | Down:
        """Let a call through (an ``Admission``, to ``release()`` when it is done), or say
        why not (``Down``): the target is unreachable and a probe is under way."""
        with self._lock:
            now = self._clock()
            if self._failed_at is None or now - self._failed_at >= self._window:
                return Admission(None, probe=False)
            assert self._since is not None
            if self._pings or (self._probe is not None and now < self._probe_until):
                return Down(self._reason, now - self._since)
            self._probe = Admission(self, probe=True)
            self._probe_until = now + self._probe_lapse
            return self._probe

    @contextmanager
    def pinging(self) -> Iterator[None]:
        """A check of the target of the engine's own (the reaper's ping): no caller is let
        through as a probe meanwhile, the ping is finding out."""
        with self._lock:
            self._pings += 1
        try:
            yield
        finally:
            with self._lock:
                self._pings -= 1

    def _end_probe(self, probe: Admission) -> None:
        with self._lock:
            if self._probe is probe:
                self._probe = None
