"""Per-target health: a circuit breaker, so calls naming a target known to be down fail
at once instead of each waiting out the call's timeout (docs/broker.md, "When a database
fails").

States, per target and per broker process:

- **answering** (closed): every call goes through;
- **down** (open): a call failed for want of an answer (connect or read timeout, a
  refused or broken connection: ``TargetUnreachable``). For ``DOWN_WINDOW`` seconds after
  the last such failure, calls that would make or change a user are refused without
  trying (the API's ``503 target_unreachable``);
- after the window, **one probe at a time** is let through to find out whether the target
  is back; the others are still refused. A probe that never reports lets the next one go
  after ``PROBE_LAPSE``.

Any answer from the target (a success, or an error the database itself gave) closes the
breaker; another failure to answer restarts the window. The engine's own calls report
both ways, the reaper's pings included: while a target is down the reaper pings it every
second, so its return closes the breaker within about a second, whether or not a caller
probes. Revocations are never refused here: the reaper skips a target that is down and
revokes its due leases as soon as it answers again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dbaccess.broker.engines.base import CALL_TIMEOUT, CreateSlots

DOWN_WINDOW = 5.0  # seconds after a failure to answer during which nothing is tried
# A probe holds its slot at most this long (a creation waits up to 3 s for a slot, then
# the call up to CALL_TIMEOUT): one that never reports (a bug, a crash of its thread)
# cannot keep every later caller refused.
PROBE_LAPSE = CreateSlots.WAIT_SECONDS + CALL_TIMEOUT + 2.0


@dataclass(frozen=True)
class Down:
    """Why and since when a target counts as down (for the refusal's message)."""

    reason: str
    seconds_ago: float
    retry_in: float  # seconds until a probe may be let through (0: one is under way)


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
        why not (``Down``): within the window after a failure, or while another call
        probes the target."""
        with self._lock:
            if self._failed_at is None:
                return Admission(None, probe=False)
            now = self._clock()
            assert self._since is not None
            quiet_until = self._failed_at + self._window
            if now < quiet_until:
                return Down(self._reason, now - self._since, quiet_until - now)
            if self._probe is not None and now < self._probe_until:
                return Down(self._reason, now - self._since, 0.0)
            self._probe = Admission(self, probe=True)
            self._probe_until = now + self._probe_lapse
            return self._probe

    def _end_probe(self, probe: Admission) -> None:
        with self._lock:
            if self._probe is probe:
                self._probe = None
