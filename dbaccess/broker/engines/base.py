"""The small interface every engine implements — the broker's calls (``Engine``) and the
operator's checks (``EngineChecks``) — and the username scheme the engines share."""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from dbaccess.broker.settings import RoleTemplate, TargetSection

if TYPE_CHECKING:
    from dbaccess.broker.engines.health import TargetHealth


class EngineError(Exception):
    """A database operation failed. The message never contains a password."""


class EngineRefused(EngineError):
    """The database refused the request as beyond a bound it enforces itself (e.g. a
    renewal past the user's creation plus max_lifetime): the caller's error, not a failure."""


class TargetUnreachable(EngineError):
    """The target did not answer in time, or the connection broke: the database may not
    have seen the call, or may have done it without the broker hearing back."""


class LoginFailed(EngineError):
    """The target answered but refused the login (a wrong password, no such account, or
    one not allowed to log in): e.g. a target not bootstrapped yet (check-config)."""


# Every database call is bounded, so a target that is down, stopped (SIGSTOP) or wedged
# costs a caller at most these, never more (docs/broker.md, "When a database fails"):
CONNECT_TIMEOUT = 5.0  # a new connection, TCP and the login handshake
STATEMENT_TIMEOUT = 8.0  # server side: a slow (not stopped) database ends the statement
CALL_TIMEOUT = 10.0  # client side: waiting for a connection plus the statement; a server
# that stopped answering (a stopped process acknowledges packets, so no TCP timeout fires)
# has the call's socket shut down. Longer than revoke_user's 5 s wait for sessions to end.


def not_bootstrapped(target: str) -> str:
    """Said when the definer functions are missing: the first request after a forgotten
    bootstrap, which the message reaches (the CLI's error, the broker's log)."""
    return (
        f"target '{target}' looks not bootstrapped; an operator runs: "
        f"dbaccess-broker bootstrap {target} (dbaccess-broker check-config tells)"
    )


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


@dataclass(frozen=True)
class Account:
    """A login account of a target as its catalog shows it (``Engine.inventory``), in the
    engine's own words: what an auditor asks of every standing path to the data."""

    name: str  # as the engine names accounts (MariaDB: user@host)
    user: str  # the user name alone, as a session user's is kept in its lease
    powers: tuple[str, ...]  # risky attributes or privileges, e.g. ("SUPERUSER",)
    member_of: tuple[str, ...]  # roles it holds, directly or through others
    privileged_roles: tuple[str, ...]  # of those, the ones that carry powers themselves
    password_expires: datetime | None  # None: never
    owns: int  # objects it owns (on MariaDB: is the DEFINER of)
    managed: bool  # carries the target's managed prefix, or dbaccess made it


class Engine(Protocol):
    name: str
    max_username_length: int
    health: TargetHealth  # every call reports to it: see engines/health.py

    def create_user(self, user: NewUser) -> None:
        """Create the login, member of its role template, expiring at ``expires_at``."""

    def renew_user(self, username: str, expires_at: datetime) -> None:
        """Move the login's expiry (only for users this engine created)."""

    def revoke_user(self, username: str) -> None:
        """Lock the login, end its live sessions and drop it. Idempotent."""

    def revoke_users(self, usernames: Sequence[str]) -> dict[str, str | None]:
        """``revoke_user`` for each name: for each, None once it is gone, else why not
        (each user's failure is its own). Raises EngineError only when no name could be
        tried (e.g. the target does not answer). ``revoke_each`` does it one by one."""

    def list_managed_users(self) -> list[str]:
        """Every login that carries this target's managed prefix."""

    def inventory(self) -> list[Account]:
        """Every login account of the target, through the bootstrap's definer routine
        (the provisioner reads the catalog only)."""

    @property
    def troubled(self) -> bool:
        """A call failed for want of an answer (TargetUnreachable) and nothing answered
        since (``health.down``)."""

    def ping(self) -> None:
        """Check the target answers, on a fresh connection (TargetUnreachable if not).
        After trouble, a success also starts the engine's connections afresh."""

    def close(self) -> None:
        """Release connections (at shutdown, or when the target is reconfigured)."""


# An engine is a package of four modules (engines/registry.py names it), each one of the
# protocols below; tests/broker/engines/test_interface.py checks every registered one.


class EngineModule(Protocol):
    """``engine.py``: the broker's calls."""

    @property
    def ENGINE(self) -> Callable[[str, TargetSection], Engine]:
        """The Engine class: ``ENGINE(name, target)`` serves one target."""


class EngineBootstrap(Protocol):
    """``bootstrap.py``: the one-time set-up, as SQL an operator reviews."""

    def render(self, target_name: str, target: TargetSection) -> str:
        """The bootstrap's SQL for ``target`` (``dbaccess-broker bootstrap``)."""


class EngineAdmin(Protocol):
    """``admin.py``: the operator's commands beside the broker's calls."""

    ADMIN_DSN_EXAMPLE: str  # what DBACCESS_ADMIN_DSN looks like, in the hint

    def apply_bootstrap(
        self, name: str, target: TargetSection, admin_dsn: str, password: str
    ) -> list[str]:
        """Run the bootstrap through ``admin_dsn`` (``bootstrap --apply``), setting the
        provisioner's ``password``; what the operator should know after. DatabaseError
        when it fails."""

    def change_own_password(self, name: str, target: TargetSection, old: str, new: str) -> None:
        """The provisioner changes its own password (``rotate-credential``), sent as a
        hash or verifier, never in the clear. DatabaseError when it fails."""


Writes = dict[str, dict[str, list[str]]]  # group role -> kind of write -> objects


class EngineChecks(Protocol):
    """What ``check-config`` and the broker's start-up ask a target, in the engine's own
    terms: the module ``engines/<engine>/checks.py`` (imported only when used; a driver
    only inside its functions, so ``--offline`` needs none). broker/checks.py and
    broker/capacity.py loop over the targets and word the findings; every function is
    read as the provisioner, whose password the target's settings hold."""

    # Why a read_only template's grants matter, completing "..., so these grants are what
    # it may do": e.g. "A session can turn read-only off (it is only a default),".
    read_only_caveat: str

    def missing(self, target: TargetSection, password: str) -> list[str]:
        """What the bootstrap should have set up that the provisioner cannot find or
        use (functions, EXECUTE, group roles, an outdated function), in words; [] when
        bootstrapped. LoginFailed when the target refuses the login, TargetUnreachable
        when it cannot be reached."""

    def read_only_writes(self, name: str, target: TargetSection, groups: list[str]) -> Writes:
        """For each group role in ``groups`` (of read_only templates): each kind of write
        privilege it holds ("CREATE on schema", ...) and on what."""

    def shared_server_warning(
        self, listed: str, host: str, port: int, targets: list[TargetSection]
    ) -> str:
        """The warning for several targets (``listed``, already quoted) on one server:
        what they share there and what to do."""

    def broker_connections(self, target: TargetSection, revoke_workers: int) -> int:
        """How many connections one broker process may hold to ``target`` at once."""

    def server_connections(self, target: TargetSection) -> tuple[int, int]:
        """(max_connections, connections reserved for superusers) of the target's server.
        Raises whatever the driver raises when it cannot ask."""

    def server_problems(self, target: TargetSection) -> tuple[list[str], list[str]]:
        """(errors, warnings) about server settings the broker rests on (([], []) when
        the engine has none to check). Raises when it cannot ask."""

    def target_warnings(self, name: str, target: TargetSection) -> list[str]:
        """Any other warning about a bootstrapped target, each starting
        "target '<name>': "; never raises (a failure to ask is itself a warning)."""


def first_few(objects: Sequence[str], shown: int = 5) -> str:
    """``objects`` for a warning: the first ``shown`` named, the rest counted."""
    more = f" (+{len(objects) - shown} more)" if len(objects) > shown else ""
    return ", ".join(objects[:shown]) + more


def revoke_each(engine: Engine, usernames: Sequence[str]) -> dict[str, str | None]:
    """``revoke_users`` as one ``revoke_user`` call per name (MariaDB, and a PostgreSQL
    bootstrap older than dbaccess.revoke_users). Once the target stops answering, the
    names left are not tried: each would wait for its own timeout."""
    outcomes: dict[str, str | None] = {}
    unreachable: TargetUnreachable | None = None
    for name in usernames:
        if unreachable is not None:
            outcomes[name] = (
                f"cannot connect to target '{engine.name}' (it does not "
                "answer; tried again as soon as it does)"
            )
            continue
        try:
            engine.revoke_user(name)
            outcomes[name] = None
        except TargetUnreachable as exc:
            outcomes[name] = str(exc)
            unreachable = exc
        except EngineError as exc:
            outcomes[name] = str(exc)
    return outcomes


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
