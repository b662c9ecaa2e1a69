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
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dbaccess.broker.engines.base import (
    CALL_TIMEOUT,
    CONNECT_TIMEOUT,
    STATEMENT_TIMEOUT,
    Account,
    CreateSlots,
    EngineError,
    EngineRefused,
    NewUser,
    TargetUnreachable,
    not_bootstrapped,
    revoke_each,
)
from dbaccess.broker.engines.deadline import WATCHDOG, Deadline
from dbaccess.broker.engines.health import TargetHealth
from dbaccess.broker.engines.postgres.scram import scram_sha256_verifier
from dbaccess.broker.engines.postgres.tls import ssl_root
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
Pool = ConnectionPool[Connection]
T = TypeVar("T")


class _Broken(Exception):
    """A pooled connection turned out dead before the deadline (the server restarted, or
    ended it while it sat in the pool): the call is tried once more on a fresh pool."""

    def __init__(self, error: psycopg.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


class _LivenessCheck:
    """Ping only the connections idle for longer than ``ALIVE_BYPASS_SECONDS`` since
    ``returned`` saw them last. (``returned`` is called by the engine, not as the pool's
    ``reset`` callback: with one, psycopg_pool hands every returned connection to a worker
    thread, which costs more than the ping.) The ping runs in the caller's thread, under
    the caller's deadline: a stopped server would hold it. The engine calls ``check`` on
    the connection the pool lent, not as the pool's ``check`` callback: there a dead
    connection made the pool sleep a growing backoff (1 s, 2 s, ...) before lending the
    next one, and after a restart every pooled connection is dead."""

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
        self._pool: Pool | None = None
        self._pool_password: str | None = None
        self._liveness = _LivenessCheck()
        self._creating = CreateSlots(name, target.create_concurrency)
        self.health = TargetHealth(name)
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
            "sslrootcert": ssl_root(self.target),
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

    def _current_pool(self) -> tuple[Pool, _LivenessCheck]:
        """The pool of connections as the provisioner (a SCRAM login costs ~10 ms per
        connect), and its liveness check. The pool is rebuilt when the provisioner's
        password changes (rotation)."""
        password = self.target.provisioner.read_password()
        with self._lock:
            if self._pool is None or self._pool_password != password:
                if self._pool is not None:
                    self._pool.close()
                self._liveness = _LivenessCheck()
                self._pool = ConnectionPool(
                    kwargs=self._connect_kwargs(password),
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=POOL_TIMEOUT,
                    reconnect_timeout=RECONNECT_GIVE_UP,
                    name=f"dbaccess-{self.name}",
                    open=True,
                )
                self._pool_password = password
            return self._pool, self._liveness

    def _drop_pool(self, pool: Pool | None = None) -> None:
        """Start afresh: the next call builds a new pool. Only ``pool`` if given (calls
        that met dead connections of one pool at once drop it once, not its successor).
        The old one is closed in the background: its connections may wait on dead sockets."""
        with self._lock:
            if self._pool is None or (pool is not None and self._pool is not pool):
                return
            stale, self._pool = self._pool, None
        threading.Thread(target=stale.close, daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    @property
    def troubled(self) -> bool:
        return self.health.down

    def ping(self) -> None:
        """``SELECT 1`` on a connection of its own (the pool may be empty and waiting out
        a reconnect delay). After trouble, a success drops the pool: the next call gets a
        fresh one at once instead of waiting for the old pool's next attempt."""
        kwargs = self._connect_kwargs(self.target.provisioner.read_password())
        try:
            with self.health.pinging(), WATCHDOG.watch(CALL_TIMEOUT) as deadline:
                with psycopg.connect(**kwargs) as conn:  # type: ignore[arg-type]
                    deadline.attach(conn)
                    conn.execute("SELECT 1")
        except psycopg.Error as exc:
            said = f"target '{self.name}' does not answer: {_first_line(exc)}"
            self.health.failed(said)
            raise TargetUnreachable(said) from None
        if self.health.down:
            self._drop_pool()
            self.health.answered()

    def _call(self, what: str, work: Callable[[Connection], T]) -> T:
        """``work`` on a pooled connection; any failure becomes an EngineError saying
        ``what`` failed. The whole call, waiting for the connection included, has
        CALL_TIMEOUT.

        A connection found dead before the deadline (the server restarted, or ended it
        while it sat in the pool) drops the whole pool — after a restart every pooled
        connection is dead, and handing them out one after another made a burst of 502s —
        and ``work`` is tried once more on a fresh one. That is safe for every call this
        engine makes: ``renew_user`` sets an absolute expiry, ``revoke_user(s)`` drops what
        is still there, ``managed_users`` reads, so each gives the same result run twice.
        ``create_user`` is not idempotent, but its retry cannot do harm either: mostly the
        connection was dead before the call was sent (the server had ended it), so the
        first try did nothing; if the server did create the user before the connection
        broke, the retry fails on the existing name (an EngineError: the issuer marks the
        lease for revocation and the user is dropped). It never creates a second user,
        nor makes one with a password other than the one handed out."""
        with WATCHDOG.watch(CALL_TIMEOUT) as deadline:
            try:
                try:
                    result = self._attempt(work, deadline)
                except _Broken as broken:
                    log.info(
                        "a pooled connection was dead; starting afresh and trying again",
                        extra={"target": self.name, "error": _first_line(broken.error)},
                    )
                    result = self._attempt(work, deadline, again=True)
            except _Broken as broken:
                said = f"{what} on '{self.name}' failed: {_first_line(broken.error)}"
                self.health.failed(said)
                raise TargetUnreachable(said) from None
            except PoolTimeout:
                said = (
                    f"cannot connect to target '{self.name}' "
                    f"(no connection within {POOL_TIMEOUT:.0f} s)"
                )
                self.health.failed(said)
                raise TargetUnreachable(said) from None
            except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
                self.health.answered()
                raise EngineError(
                    f"{what} on '{self.name}' failed: {_first_line(exc)}; "
                    f"{not_bootstrapped(self.name)}"
                ) from None
            except psycopg.errors.QueryCanceled:
                self.health.answered()  # slow, but it answered: its statement_timeout
                raise EngineError(
                    f"{what} on '{self.name}' failed: the database took longer than "
                    f"{STATEMENT_TIMEOUT:.0f} s"
                ) from None
            except psycopg.OperationalError as exc:
                # The watchdog shut the connection (no answer within the deadline).
                said = (
                    f"no answer within {CALL_TIMEOUT:.0f} s"
                    if deadline.expired
                    else _first_line(exc)
                )
                said = f"{what} on '{self.name}' failed: {said}"
                self.health.failed(said)
                raise TargetUnreachable(said) from None
            except EngineRefused:
                self.health.answered()
                raise
            except psycopg.Error as exc:
                self.health.answered()  # an error of the database's own: it answers
                raise EngineError(f"{what} on '{self.name}' failed: {_first_line(exc)}") from None
        self.health.answered()
        return result

    def _attempt(
        self, work: Callable[[Connection], T], deadline: Deadline, again: bool = False
    ) -> T:
        """One try of ``work`` on a connection of the current pool; ``_Broken`` if the
        connection is dead (pinged after idling, or failing the call) before the deadline.
        On the second try (``again``), the pool is the fresh one: its connection is new."""
        pool, liveness = self._current_pool()
        with pool.connection() as conn:
            deadline.attach(conn)
            try:
                liveness.check(conn)
                return work(conn)
            except psycopg.OperationalError as exc:
                if conn.broken and not deadline.expired:
                    # handed back broken, the pool discards it; the rest of this pool
                    # is suspect too: the next call builds a new one
                    self._drop_pool(pool)
                    raise _Broken(exc) from None
                raise
            finally:
                liveness.returned(conn)

    def create_user(self, user: NewUser) -> None:
        timeout = user.role.statement_timeout
        verifier = scram_sha256_verifier(user.password)  # ~1.4 ms: not while holding a connection
        args = (
            user.username,
            verifier,
            user.expires_at,
            user.role.group_role,
            user.role.connection_limit,
            user.role.read_only,
            int(timeout.total_seconds() * 1000) if timeout else None,
            user.log_statements,
        )
        with self._creating.hold():
            self._call(
                f"creating {user.username}",
                lambda conn: conn.execute(
                    "SELECT dbaccess.create_user(%s, %s, %s, %s, %s, %s, %s, %s)", args
                ),
            )

    def renew_user(self, username: str, expires_at: datetime) -> None:
        def renew(conn: Connection) -> None:
            try:
                conn.execute("SELECT dbaccess.renew_user(%s, %s)", (username, expires_at))
            except psycopg.Error as exc:
                # beyond its creation + max_lifetime: postgres_bootstrap's renew_user
                if exc.sqlstate == LIFETIME_EXCEEDED:
                    raise EngineRefused(_first_line(exc).removeprefix("dbaccess: ")) from None
                raise

        self._call(f"renewing {username}", renew)

    def revoke_user(self, username: str) -> None:
        row = self._call(
            f"revoking {username}",
            lambda conn: conn.execute("SELECT dbaccess.revoke_user(%s)", (username,)).fetchone(),
        )
        problem = row[0] if row else None
        # NULL: gone. Text: why not yet (the user stays NOLOGIN meanwhile). An integer:
        # sessions left, from a bootstrap older than the text answer.
        if isinstance(problem, int):
            problem = (
                f"{problem} session(s) of {username} did not terminate yet" if problem else None
            )
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
                if self.health.down:  # it stopped answering while this batch waited its turn
                    raise TargetUnreachable(
                        f"cannot connect to target '{self.name}' (it "
                        "does not answer; tried again as soon as it does)"
                    )
                return self._revoke_batch(usernames)
        except TargetUnreachable:
            raise
        except EngineError as exc:
            log.warning(
                "revoking a batch failed; revoking its users one by one",
                extra={"target": self.name, "error": str(exc)},
            )
            return revoke_each(self, usernames)

    def _revoke_batch(self, usernames: Sequence[str]) -> dict[str, str | None]:
        def revoke(conn: Connection) -> list[tuple[object, ...]] | None:
            try:
                return conn.execute(
                    "SELECT * FROM dbaccess.revoke_users(%s)", (list(usernames),)
                ).fetchall()
            except psycopg.errors.UndefinedFunction:
                return None

        rows = self._call(f"revoking {len(usernames)} users", revoke)
        if rows is None:
            if not self._no_batch_until:
                log.warning(
                    "dbaccess.revoke_users is missing (a bootstrap older than the "
                    "broker): revoking one user per call; re-run the bootstrap",
                    extra={"target": self.name},
                )
            self._no_batch_until = time.monotonic() + NO_BATCH_RETRY
            return revoke_each(self, usernames)
        said = {str(name): problem for name, problem in rows}
        return {
            name: (
                None
                if (problem := said.get(name, "no answer for it")) is None
                else f"revoking {name} on '{self.name}': {problem}"
            )
            for name in usernames
        }

    def list_managed_users(self) -> list[str]:
        rows = self._call(
            "listing users",
            lambda conn: conn.execute(
                "SELECT * FROM dbaccess.managed_users() ORDER BY 1"
            ).fetchall(),
        )
        return [str(row[0]) for row in rows]

    def inventory(self) -> list[Account]:
        rows: list[tuple[Any, ...]] = self._call(
            "reading the login roles",
            lambda conn: conn.execute("SELECT * FROM dbaccess.inventory()").fetchall(),
        )
        accounts = []
        for name, sup, createrole, createdb, bypass, repl, until, held, strong, owned, ours in rows:
            flags = (("SUPERUSER", sup), ("CREATEROLE", createrole), ("CREATEDB", createdb),
                     ("BYPASSRLS", bypass), ("REPLICATION", repl))  # fmt: skip
            accounts.append(
                Account(
                    name=str(name),
                    user=str(name),
                    powers=tuple(word for word, on in flags if on),
                    member_of=tuple(held),
                    privileged_roles=tuple(strong),
                    password_expires=None if until is None else datetime.fromisoformat(until),
                    owns=int(owned),
                    managed=bool(ours),
                )
            )
        return accounts


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
