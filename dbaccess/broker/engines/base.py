"""The small interface every engine implements, and the username scheme they share."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from dbaccess.broker.settings import RoleTemplate


class EngineError(Exception):
    """A database operation failed. The message never contains a password."""


class EngineRefused(EngineError):
    """The database refused the request as beyond a bound it enforces itself (e.g. a
    renewal past the user's creation plus max_lifetime): the caller's error, not a failure."""


def not_bootstrapped(target: str) -> str:
    """Said when the definer functions are missing: the first request after a forgotten
    bootstrap, which the message reaches (the CLI's error, the broker's log)."""
    return (f"target '{target}' looks not bootstrapped; an operator runs: "
            f"dbaccess-broker bootstrap {target} (dbaccess-broker check-config tells)")


class CreateSlots:
    """At most ``limit`` users being created at once on one target, the rest queue.

    Creating a user is CPU work for the database: PostgreSQL runs the verifier's 4,096
    PBKDF2 rounds once more to refuse an empty password, ~5 ms a user. More creations at
    once than the server has cores only add contention — on a 2-core PostgreSQL, direct
    calls of the same SQL run ~300/s from 4 clients and ~200/s from 8 (bench/issuance.py).
    Revocations do not take these slots. A request waits as long as for a pooled
    connection: it holds one of the API's worker threads meanwhile."""

    WAIT_SECONDS = 3.0

    def __init__(self, target: str, limit: int) -> None:
        self._target = target
        self._limit = limit
        self._free = threading.BoundedSemaphore(limit)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.WAIT_SECONDS):
            raise EngineError(
                f"target '{self._target}' is busy: {self._limit} user(s) were being created "
                f"for {self.WAIT_SECONDS:.0f} s (create_concurrency)"
            )
        try:
            yield
        finally:
            self._free.release()


@dataclass(frozen=True)
class NewUser:
    username: str
    password: str
    role: RoleTemplate
    expires_at: datetime
    log_statements: bool = False  # break-glass: the server logs every statement

    def __repr__(self) -> str:  # keep the password out of tracebacks and logs
        return f"NewUser(username={self.username!r}, role={self.role.group_role!r})"


class Engine(Protocol):
    name: str
    max_username_length: int

    def create_user(self, user: NewUser) -> None:
        """Create the login, member of its role template, expiring at ``expires_at``."""

    def renew_user(self, username: str, expires_at: datetime) -> None:
        """Move the login's expiry (only for users this engine created)."""

    def revoke_user(self, username: str) -> None:
        """Lock the login, end its live sessions and drop it. Idempotent."""

    def list_managed_users(self) -> list[str]:
        """Every login that carries this target's managed prefix."""

    def close(self) -> None:
        """Release connections (at shutdown, or when the target is reconfigured)."""


SUFFIX_BYTES = 5  # 10 hex characters: 40 bits, so even 10,000 live users of one person do
# not meet (24 bits did: a name collision is a failed issuance)


def make_username(prefix: str, person: str, max_length: int) -> str:
    """``prefix + person + _ + random``: lowercase, ASCII, and never truncated by the server.

    PostgreSQL silently truncates names over 63 bytes, which would let two long names
    collide, so the person part is shortened here instead.
    """
    cleaned = re.sub(r"[^a-z0-9]+", "_", person.lower()).strip("_") or "user"
    room = max_length - len(prefix) - 1 - 2 * SUFFIX_BYTES
    if room < 1:
        raise ValueError(f"prefix '{prefix}' leaves no room in a {max_length}-character name")
    name = f"{prefix}{cleaned[:room].rstrip('_')}_{secrets.token_hex(SUFFIX_BYTES)}"
    assert len(name.encode()) <= max_length
    return name


def make_password() -> str:
    """A random password for one session: 192 bits, URL-safe characters only."""
    return secrets.token_urlsafe(24)
