"""Deadlines for database calls whose driver has no read timeout (psycopg 3).

A PostgreSQL server that is stopped (SIGSTOP), swapped out or wedged keeps its TCP
connections open: the kernel still acknowledges every packet, so neither libpq's
``tcp_user_timeout`` nor keepalives notice, and a query waits forever. A watchdog thread
ends such a call by shutting its socket down: the blocked read returns at once, psycopg
raises ``OperationalError`` and the pool discards the connection. (``conn.cancel()`` would
not do: the cancel request goes to the postmaster, which is stopped too.)
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Protocol


class _HasSocket(Protocol):
    def fileno(self) -> int: ...


class Deadline:
    """One call's deadline and the connection it currently waits on (if any)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._conn: _HasSocket | None = None
        self._lock = threading.Lock()

    def attach(self, conn: _HasSocket) -> None:
        """The call now waits on ``conn`` (a pooled connection being checked, then used)."""
        with self._lock:
            self._conn = conn
            expired = self.expired
        if expired:
            _shut_down(conn)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            conn = self._conn
        if conn is not None:
            _shut_down(conn)


def _shut_down(conn: _HasSocket) -> None:
    """Shut the connection's socket down for both directions (the fd stays the driver's,
    so a duplicate is shut down: shutdown acts on the socket, not on the descriptor)."""
    with suppress(OSError, ValueError, Exception):
        duplicate = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


class Watchdog:
    """Expires the deadlines of running calls; one daemon thread, ticking every 0.2 s
    while any call runs (a deadline is seconds long: 0.2 s late is close enough)."""

    TICK = 0.2

    def __init__(self) -> None:
        self._running: set[Deadline] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    @contextmanager
    def watch(self, seconds: float) -> Iterator[Deadline]:
        deadline = Deadline(seconds)
        with self._lock:
            self._running.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dbaccess-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = deadline
        try:
            yield deadline
        finally:
            self._local.deadline = previous
            with self._lock:
                self._running.discard(deadline)

    def current(self) -> Deadline | None:
        """The deadline of the call this thread is in (for the pool's check callback)."""
        return getattr(self._local, "deadline", None)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._running:
                    self._wake.wait()
                now = time.monotonic()
                due = [d for d in self._running if not d.expired and d.at <= now]
            for deadline in due:
                deadline._expire()
            time.sleep(self.TICK)


WATCHDOG = Watchdog()
