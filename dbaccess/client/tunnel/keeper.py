"""Which session a new GUI connection goes through, and when to ask the broker for another.

The decision is pure (``needs_fresh``); ``SessionKeeper`` applies it for the tunnel's
connections: one session at a time, shared by every connection, replaced when it has
ended or is about to (within ``margin``), by one request to the broker however many
connections are waiting for it. Connections already open stay on their session until the
gateway ends them with it; the keeper remembers every session it obtained so that the
tunnel revokes them all when it stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# A new connection gets a fresh session this long before the current one ends (at most a
# quarter of the session's length, so a short session is not replaced at once): a GUI
# that opens a connection one second before the end would otherwise be cut off at once.
MAX_MARGIN = timedelta(seconds=60)


@dataclass
class Held:
    """A session the tunnel obtained: the grant (with its secret) and what we learnt since."""

    granted: Any = field(repr=False)  # wire.SessionGranted: its password stays in memory
    obtained_at: datetime
    ended: bool = False  # the gateway refused it: revoked, or expired early

    @property
    def id(self) -> str:
        return str(self.granted.id)

    @property
    def expires_at(self) -> datetime:
        return _aware(self.granted.expires_at)


def margin(held: Held) -> timedelta:
    """How long before its end a session is no longer handed to new connections."""
    length = held.expires_at - held.obtained_at
    return max(timedelta(0), min(MAX_MARGIN, length / 4))


def needs_fresh(held: Held | None, now: datetime) -> bool:
    """Whether a new connection needs a new session rather than ``held``."""
    if held is None or held.ended:
        return True
    return now >= held.expires_at - margin(held)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class SessionKeeper:
    """The current session for new connections; ``obtain`` is the blocking broker call
    (run in a thread, one at a time). ``on_new`` is told of each session obtained."""

    def __init__(
        self,
        obtain: Callable[[], Any],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_new: Callable[[Held], None] = lambda _held: None,
    ) -> None:
        self._obtain = obtain
        self._clock = clock
        self._on_new = on_new
        self._lock = asyncio.Lock()
        self._kept = threading.Lock()
        self.current: Held | None = None
        self.obtained: list[Held] = []

    def adopt(self, granted: Any) -> Held:
        """A session obtained before the tunnel started serving (the first one)."""
        held = self._keep(granted)
        self.current = held
        self._on_new(held)
        return held

    async def session(self) -> Held:
        """The session for a new connection: the current one, or a fresh one."""
        async with self._lock:  # connections arriving meanwhile wait for the same answer
            if needs_fresh(self.current, self._clock()):
                held = await asyncio.to_thread(self._obtain_and_keep)
                self.current = held
                self._on_new(held)
            assert self.current is not None
            return self.current

    def _obtain_and_keep(self) -> Held:
        # kept in the thread itself: a tunnel stopped while the broker answers still
        # revokes the session that answer made (asyncio.run waits for the thread)
        return self._keep(self._obtain())

    def _keep(self, granted: Any) -> Held:
        held = Held(granted, obtained_at=self._clock())
        with self._kept:
            self.obtained.append(held)
        return held

    def ended(self, held: Held) -> None:
        """The gateway no longer knows ``held``: the next connection gets a fresh one."""
        held.ended = True
