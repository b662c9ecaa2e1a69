"""What a background loop logs when its passes fail: one line when the failure starts,
one when it ends.

A loop that retries every second (the reaper, the webhook sender) would otherwise log a
traceback a second while the store is down: thousands of lines saying the same thing,
which bury the one that says when it started. ``Outage`` logs a warning at the first
failing pass (what failed, the error's class and its first line, how often it is
retried), another only for a kind of error not seen yet in this outage, the tracebacks
and the repeats at debug level, and "recovered after X s" at the first pass that works
again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dbaccess.errors import DbaccessError


def describe(exc: BaseException) -> str:
    """``exc`` in one line for a log: its class and its message's first line, at most 200
    characters. The broker's own errors are already worded for people and carry no secret
    (the store's name no host, user or password: database.py logs those once); a driver's
    error is the driver's message, never its SQL or its parameters."""
    if isinstance(exc, DbaccessError):
        message = exc.message
    else:
        orig = getattr(exc, "orig", None)  # SQLAlchemy's wrapper: its text has the SQL
        message = str(orig if isinstance(orig, BaseException) else exc)
    first = (message.strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


MAX_ERRORS_LOGGED = 10  # distinct errors logged as warnings in one outage


class Outage:
    """The failing passes of one loop (``what``: what a pass does, e.g. "revoking the
    leases of target demo"). Call ``failed`` from the loop's ``except`` and ``passed``
    after a pass that worked. One loop, one thread: no lock."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        retry_every: float,
        clock: Callable[[], float] = time.monotonic,
        **extra: Any,
    ) -> None:
        self._log = logger
        self.what = what
        self.retry_every = retry_every
        self._clock = clock
        self._extra = extra
        self.since: float | None = None  # when the current failure started
        self._errors: set[str] = set()  # kinds logged as warnings in this one
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        error = describe(exc)
        self.failures += 1
        if self.since is None:
            self.since = self._clock()
        # One line per kind of error: a store that goes away fails a pass with "connection
        # lost", then every later one with "cannot connect", both StoreUnavailable.
        kind = type(exc).__name__
        if kind not in self._errors and len(self._errors) < MAX_ERRORS_LOGGED:
            self._errors.add(kind)  # another kind in the same outage is worth a line too
            self._log.warning(
                "%s failed: %s; retrying every %g s (repeats are logged at debug level)",
                self.what,
                error,
                self.retry_every,
                extra={**self._extra, "error": error, "retry_every_s": self.retry_every},
            )
        self._log.debug(
            "%s failed (pass %d of this outage)",
            self.what,
            self.failures,
            exc_info=exc,
            extra=self._extra,
        )

    def passed(self) -> None:
        if self.since is None:
            return
        lasted = self._clock() - self.since
        self._log.info(
            "%s recovered after %.1f s (%d failed passes)",
            self.what,
            lasted,
            self.failures,
            extra={**self._extra, "outage_s": round(lasted, 1), "failed_passes": self.failures},
        )
        self.since, self._errors, self.failures = None, set(), 0
