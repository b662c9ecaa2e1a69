"""PostgreSQL engine: calls the bootstrap's SECURITY DEFINER functions, nothing else.

Facts this module relies on (measured on PostgreSQL 15):
- the password reaches the server only as a SCRAM-SHA-256 verifier computed here
  (a failing statement is written to the server log, so a plaintext password would be too);
- ``VALID UNTIL`` is checked only at password login, and ``DROP ROLE``/``NOLOGIN`` leave live
  sessions running, so ``dbaccess.revoke_user`` terminates the role's backends first;
- per-role settings are not inherited from group roles, so they are set on each user.
Every value travels as a bound parameter; the functions validate and quote them.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dbaccess.broker.engines.base import (
    CALL_TIMEOUT,
    CONNECT_TIMEOUT,
    STATEMENT_TIMEOUT,
    CreateSlots,
    EngineError,
    EngineRefused,
    NewUser,
    TargetUnreachable,
    not_bootstrapped,
    revoke_each,
)
from dbaccess.broker.engines.deadline import WATCHDOG
from dbaccess.broker.engines.postgres.scram import scram_sha256_verifier
from dbaccess.broker.settings import TargetSection

log = logging.getLogger("dbaccess.broker.engines")

POOL_SIZE = 10
POOL_TIMEOUT = 3.0  # how long a call waits for a connection before the attempt fails
# psycopg_pool retries a failed connect with a doubling delay until this much time has
# passed, then gives up that attempt (the next request starts a new one). Its default, 5
# minutes, let the delay reach 64 s or more during an outage: the pool stayed empty that
# long after the server came back, and every call was a 502 meanwhile.
RECONNECT_GIVE_UP = 10.0
# A connection handed back less than this long ago is lent again without a liveness ping
# (HikariCP's aliveBypassWindowMs, same value): under load the ping was a whole extra round
# trip per session, while a connection idle for longer is still checked, and one that broke
# meanwhile is discarded by the pool when the call fails on it.
ALIVE_BYPASS_SECONDS = 0.5

Connection = psycopg.Connection[tuple[object, ...]]


class _LivenessCheck:
    """The pool's ``check`` callback: ping only the connections idle for longer than
    ``ALIVE_BYPASS_SECONDS`` since ``returned`` saw them last. (``returned`` is called by
    the engine, not as the pool's ``reset`` callback: with one, psycopg_pool hands every
    returned connection to a worker thread, which costs more than the ping.) The ping runs
    in the caller's thread, under the caller's deadline: a stopped server would hold it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._returned_at: weakref.WeakKeyDictionary[Connection, float] = (
            weakref.WeakKeyDictionary()
        )

    def returned(self, conn: Connection) -> None:
        self._returned_at[conn] = self._clock()

    def check(self, conn: Connection) -> None:
        returned = self._returned_at.get(conn)
        if returned is None or self._clock() - returned > ALIVE_BYPASS_SECONDS:
            deadline = WATCHDOG.current()
            if deadline is not None:
                deadline.attach(conn)
            ConnectionPool.check_connection(conn)


class PostgresEngine:
    max_username_length = 63

    def __init__(self, name: str, target: TargetSection) -> None:
        self.name = name
        self.target = target
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._pool_password: str | None = None
        self._liveness = _LivenessCheck()
        self._creating = CreateSlots(name, target.create_concurrency)
        self._troubled = False
        self._no_batch_until = 0.0  # monotonic; while in the future: an old bootstrap
        self._batch_calls = threading.BoundedSemaphore(BATCH_CALLS)

    def _connect_kwargs(self, password: str) -> dict[str, object]:
        return {
            "host": self.target.host,
            "port": self.target.port,
            "dbname": self.target.database,
            "user": self.target.provisioner.user,
            "password": password,
            "sslmode": self.target.sslmode,
            "connect_timeout": int(CONNECT_TIMEOUT),
            # A slow server ends the statement itself (the definer functions run within it).
            "options": f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}",
            # A host that vanished from the network (no RST ever comes): the kernel gives up
            # on unacknowledged data after tcp_user_timeout, and on an idle pooled
            # connection after the keepalive probes. Neither fires for a stopped server
            # process, which the deadline watchdog covers.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(CALL_TIMEOUT * 1000),
            "application_name": "dbaccess-broker",
            "autocommit": True,
        }

    def _connection(self) -> AbstractContextManager[Connection]:
        """A pooled connection as the provisioner (a SCRAM login costs ~10 ms per connect).

        The pool is rebuilt when the provisioner's password changes (rotation)."""
        password = self.target.provisioner.read_password()
        with self._lock:
            if self._pool is None or self._pool_password != password:
                if self._pool is not None:
                    self._pool.close()
                self._liveness = liveness = _LivenessCheck()
                self._pool = ConnectionPool(
                    kwargs=self._connect_kwargs(password),
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=POOL_TIMEOUT,
                    reconnect_timeout=RECONNECT_GIVE_UP,
                    check=liveness.check,
                    name=f"dbaccess-{self.name}",
                    open=True,
                )
                self._pool_password = password
            pool = self._pool
        return pool.connection()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    @property
    def troubled(self) -> bool:
        return self._troubled

    def ping(self) -> None:
        """``SELECT 1`` on a connection of its own (the pool may be empty and waiting out
        a reconnect delay). After trouble, a success drops the pool: the next call gets a
        fresh one at once instead of waiting for the old pool's next attempt."""
        kwargs = self._connect_kwargs(self.target.provisioner.read_password())
        try:
            with WATCHDOG.watch(CALL_TIMEOUT) as deadline:
                with psycopg.connect(**kwargs) as conn:  # type: ignore[arg-type]
                    deadline.attach(conn)
                    conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self._troubled = True
            raise TargetUnreachable(
                f"target '{self.name}' does not answer: {_first_line(exc)}"
            ) from None
        if self._troubled:
            with self._lock:
                stale, self._pool = self._pool, None
            if stale is not None:  # its connections may be waiting on dead sockets
                threading.Thread(target=stale.close, daemon=True).start()
            self._troubled = False

    @contextmanager
    def _doing(self, what: str) -> Iterator[Connection]:
        """A pooled connection; any failure becomes an EngineError saying ``what`` failed.
        The whole call, waiting for the connection included, has CALL_TIMEOUT."""
        with WATCHDOG.watch(CALL_TIMEOUT) as deadline:
            try:
                with self._connection() as conn:
                    deadline.attach(conn)
                    try:
                        yield conn
                    finally:
                        self._liveness.returned(conn)
            except PoolTimeout:
                self._troubled = True
                raise TargetUnreachable(
                    f"cannot connect to target '{self.name}' "
                    f"(no connection within {POOL_TIMEOUT:.0f} s)"
                ) from None
            except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
                raise EngineError(f"{what} on '{self.name}' failed: {_first_line(exc)}; "
                                  f"{not_bootstrapped(self.name)}") from None
            except psycopg.errors.QueryCanceled:
                raise EngineError(
                    f"{what} on '{self.name}' failed: the database took longer than "
                    f"{STATEMENT_TIMEOUT:.0f} s"
                ) from None
            except psycopg.OperationalError as exc:
                # The connection broke (the server restarted) or the watchdog shut it.
                self._troubled = True
                said = (f"no answer within {CALL_TIMEOUT:.0f} s" if deadline.expired
                        else _first_line(exc))
                raise TargetUnreachable(f"{what} on '{self.name}' failed: {said}") from None
            except psycopg.Error as exc:
                raise EngineError(f"{what} on '{self.name}' failed: {_first_line(exc)}") from None
        self._troubled = False

    def create_user(self, user: NewUser) -> None:
        timeout = user.role.statement_timeout
        verifier = scram_sha256_verifier(user.password)  # ~1.4 ms: not while holding a connection
        with self._creating.hold(), self._doing(f"creating {user.username}") as conn:
            conn.execute(
                "SELECT dbaccess.create_user(%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    user.username,
                    verifier,
                    user.expires_at,
                    user.role.group_role,
                    user.role.connection_limit,
                    user.role.read_only,
                    int(timeout.total_seconds() * 1000) if timeout else None,
                    user.log_statements,
                ),
            )

    def renew_user(self, username: str, expires_at: datetime) -> None:
        with self._doing(f"renewing {username}") as conn:
            try:
                conn.execute("SELECT dbaccess.renew_user(%s, %s)", (username, expires_at))
            except psycopg.Error as exc:
                # beyond its creation + max_lifetime: postgres_bootstrap's renew_user
                if exc.sqlstate == LIFETIME_EXCEEDED:
                    raise EngineRefused(_first_line(exc).removeprefix("dbaccess: ")) from None
                raise

    def revoke_user(self, username: str) -> None:
        with self._doing(f"revoking {username}") as conn:
            row = conn.execute("SELECT dbaccess.revoke_user(%s)", (username,)).fetchone()
        problem = row[0] if row else None
        # NULL: gone. Text: why not yet (the user stays NOLOGIN meanwhile). An integer:
        # sessions left, from a bootstrap older than the text answer.
        if isinstance(problem, int):
            problem = f"{problem} session(s) of {username} did not terminate yet" \
                if problem else None
        if problem:
            raise EngineError(f"revoking {username} on '{self.name}': {problem}")

    def revoke_users(self, usernames: Sequence[str]) -> dict[str, str | None]:
        """Up to 50 names in one ``dbaccess.revoke_users`` call (one transaction, a
        subtransaction per user: see postgres_bootstrap). A bootstrap older than that
        function, or a batch the database refused as a whole, goes one by one."""
        if len(usernames) < 2 or time.monotonic() < self._no_batch_until:
            # one user (a DELETE /v1/sessions): never waits behind the reaper's batches
            return revoke_each(self, usernames)
        try:
            with self._batch_calls:
                if self._troubled:  # it stopped answering while this batch waited its turn
                    raise TargetUnreachable(f"cannot connect to target '{self.name}' (it "
                                            "does not answer; tried again as soon as it does)")
                return self._revoke_batch(usernames)
        except TargetUnreachable:
            raise
        except EngineError as exc:
            log.warning("revoking a batch failed; revoking its users one by one",
                        extra={"target": self.name, "error": str(exc)})
            return revoke_each(self, usernames)

    def _revoke_batch(self, usernames: Sequence[str]) -> dict[str, str | None]:
        with self._doing(f"revoking {len(usernames)} users") as conn:
            try:
                rows = conn.execute("SELECT * FROM dbaccess.revoke_users(%s)",
                                    (list(usernames),)).fetchall()
            except psycopg.errors.UndefinedFunction:
                rows = None
        if rows is None:
            if not self._no_batch_until:
                log.warning("dbaccess.revoke_users is missing (a bootstrap older than the "
                            "broker): revoking one user per call; re-run the bootstrap",
                            extra={"target": self.name})
            self._no_batch_until = time.monotonic() + NO_BATCH_RETRY
            return revoke_each(self, usernames)
        said = {str(name): problem for name, problem in rows}
        return {
            name: (None if (problem := said.get(name, "no answer for it")) is None
                   else f"revoking {name} on '{self.name}': {problem}")
            for name in usernames
        }

    def list_managed_users(self) -> list[str]:
        with self._doing("listing users") as conn:
            rows = conn.execute("SELECT * FROM dbaccess.managed_users() ORDER BY 1").fetchall()
        return [str(row[0]) for row in rows]


LIFETIME_EXCEEDED = "DBA01"
# revoke_users calls at once per target (the other revocation workers wait their turn):
# concurrent batches contend in the database, each one's drops waiting on the others' (on
# a 2-core PostgreSQL 15, direct calls of 50 names: ~4,500 users/s from 1-3 connections,
# ~3,300/s from 8; bench/revocation_storm.py's ratio 0.78 with 8 at once, 1.08-1.18 with 3).
BATCH_CALLS = 3
NO_BATCH_RETRY = 300.0  # after finding no dbaccess.revoke_users, look again this much later


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

ENGINE = PostgresEngine  # what engines/registry.py finds in every engine's package
