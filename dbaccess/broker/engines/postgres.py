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

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from dbaccess.broker.engines.base import (
    CreateSlots,
    EngineError,
    EngineRefused,
    NewUser,
    not_bootstrapped,
)
from dbaccess.broker.engines.scram import scram_sha256_verifier
from dbaccess.broker.settings import TargetSection

POOL_SIZE = 10
POOL_TIMEOUT = 3.0  # how long a call waits for a connection before the attempt fails
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
    returned connection to a worker thread, which costs more than the ping.)"""

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
                    kwargs={
                        "host": self.target.host,
                        "port": self.target.port,
                        "dbname": self.target.database,
                        "user": self.target.provisioner.user,
                        "password": password,
                        "sslmode": self.target.sslmode,
                        "connect_timeout": 5,
                        "application_name": "dbaccess-broker",
                        "autocommit": True,
                    },
                    min_size=1,
                    max_size=POOL_SIZE,
                    timeout=POOL_TIMEOUT,
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

    @contextmanager
    def _doing(self, what: str) -> Iterator[Connection]:
        """A pooled connection; any failure becomes an EngineError saying ``what`` failed."""
        try:
            with self._connection() as conn:
                try:
                    yield conn
                finally:
                    self._liveness.returned(conn)
        except PoolTimeout:
            raise EngineError(
                f"cannot connect to target '{self.name}' "
                f"(no connection within {POOL_TIMEOUT:.0f} s)"
            ) from None
        except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
            raise EngineError(f"{what} on '{self.name}' failed: {_first_line(exc)}; "
                              f"{not_bootstrapped(self.name)}") from None
        except psycopg.Error as exc:
            raise EngineError(f"{what} on '{self.name}' failed: {_first_line(exc)}") from None

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

    def list_managed_users(self) -> list[str]:
        with self._doing("listing users") as conn:
            rows = conn.execute("SELECT * FROM dbaccess.managed_users() ORDER BY 1").fetchall()
        return [str(row[0]) for row in rows]


LIFETIME_EXCEEDED = "DBA01"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
