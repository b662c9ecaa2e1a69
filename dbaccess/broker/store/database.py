"""The store's connection: one engine, one locked writer transaction at a time, SQLite
pragmas and PostgreSQL guards, the Alembic upgrade, and the write probe /healthz uses."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.driver_sql import DriverSql, driver_cursor
from dbaccess.broker.store.rows import StoreUnavailable
from dbaccess.broker.store.schema import store_probe

WRITE_LOCK_KEY = 0x64626163  # "dbac": the advisory lock that orders writers on PostgreSQL


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "dbaccess.broker.store:migrations")
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # a migration rewrites whole tables: not bound by [broker] store_statement_timeout
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            # Every process opening the store upgrades it (replicas, gateways, the CLI):
            # one at a time, the writers' own lock, so the later ones find the schema at
            # head and writers never write into a half-migrated one. (SQLite: BEGIN
            # IMMEDIATE, from the begin event, already takes its write lock.)
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit syncs the WAL before it returns. With NORMAL (WAL's usual
    # companion) a power cut loses the last commits: a lease and its audit records gone
    # while the person holds the password (tests/broker/store/test_durability.py shows it
    # on a real ext4; the cost is in bench/issuance.py's figures, docs/broker.md).
    cursor.execute("PRAGMA synchronous=FULL")
    # On every connection the pool opens (this is its "connect" event): a writer waits up
    # to 10 s for another process's lock rather than failing with "database is locked".
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _postgres_connect(dbapi_connection: Any, _record: Any) -> None:
    # synchronous_commit=off (a server, database or role default) acknowledges a COMMIT
    # before it is on disk. This session keeps any durable setting (local, remote_write,
    # on, remote_apply) and turns "off" back on: a lease must be stored before its password
    # leaves.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        (setting,) = cursor.fetchone()
        if setting == "off":
            cursor.execute("SET synchronous_commit TO on")
    dbapi_connection.commit()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Writers take the lock at BEGIN: a deferred transaction that reads and then writes can
    # fail at once with "database is locked" when another process writes meanwhile.
    immediate = conn.get_execution_options().get("dbaccess_write")
    # On the driver's connection, like the hot statements (see driver_sql.py). SQLAlchemy
    # does not translate errors raised in a "begin" listener: done here.
    try:
        driver_cursor(conn).execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    except sqlite3.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StoreUnavailable(f"the broker's state store failed: {reason}") from exc


def chunks(items: list[_T], size: int = 500) -> Iterator[list[_T]]:
    """``items`` in lists of at most ``size`` (bound parameters per statement stay few)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


_T = TypeVar("_T")


log = logging.getLogger("dbaccess.broker.store")


class Database:
    """The store's connection and its one writer; the aggregates below build on it."""

    def __init__(self, url: str | sa.URL, *, migrate: bool = True) -> None:
        self.engine = sa.create_engine(url)
        self.dialect = self.engine.dialect.name
        # Driver errors of any statement SQLAlchemy runs (connect and commit included)
        # become StoreUnavailable; those of the driver-cursor statements in ``_write``.
        sa.event.listen(self.engine, "handle_error", self._translate_error)
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin_immediate)
        elif self.dialect == "postgresql":
            sa.event.listen(self.engine, "connect", _postgres_connect)
        if migrate:
            upgrade(self.engine)
        self._write_lock = threading.Lock()  # one writer per process is enough
        self._sql = DriverSql.for_dialect(self.dialect)
        # The writer's connection, kept between transactions under ``_write_lock``: a pool
        # checkout and return (with its reset) cost as much as the statements of a write.
        self._writer: Connection | None = None
        # /healthz's write probe: one at a time, on a thread of its own, so a hung store
        # holds one thread, not every caller of /healthz.
        self._probe_lock = threading.Lock()
        self._probe_pool: ThreadPoolExecutor | None = None
        self._probe_running: Any = None  # the Future of the probe under way
        self._probed: tuple[float, str | None] | None = None  # (monotonic time, failure)
        # While the store fails, every caller's failure would log a line (the reaper's
        # threads and the webhook sender try every second): the first one, or one with
        # another message, is an error, repeats are debug, and the first write that works
        # again says how long it lasted.
        self._failure_lock = threading.Lock()
        self._failing: tuple[float, set[str]] | None = None  # (monotonic start, logged)

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._probe_pool is not None:
            self._probe_pool.shutdown(wait=False)
        self.engine.dispose()

    def _store_failure(self, exc: BaseException) -> StoreUnavailable | None:
        """``exc`` as StoreUnavailable when it is the driver failing (I/O, disk full,
        connection lost, corruption); None for what is not (a constraint, a bad statement:
        those are bugs or races the caller handles)."""
        raw = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
        dbapi = self.engine.dialect.loaded_dbapi
        if not isinstance(raw, dbapi.Error) or isinstance(
            raw, (dbapi.IntegrityError, dbapi.ProgrammingError, dbapi.DataError)
        ):
            return None
        reason = (str(raw).strip().splitlines() or [type(raw).__name__])[0][:200]
        if reason.startswith(("connection failed", "connection to server")):
            # psycopg's names the store's host, port and user: for the log, not for callers
            self._log_failure("cannot connect to the store", reason)
            reason = "cannot connect to the store's server (the broker's log says why)"
        return StoreUnavailable(f"the broker's state store failed: {reason}")

    def _log_failure(self, message: str, reason: str) -> None:
        with self._failure_lock:
            if self._failing is None:
                self._failing = (time.monotonic(), set())
            # Once per message: a server shutting down refuses first with "shutting down",
            # then with "connection refused"; the first reason is the one that says why.
            seen = self._failing[1]
            new = message not in seen
            seen.add(message)
        if new:
            log.error(
                "%s (until it works again, repeats are logged at debug level)",
                message,
                extra={"error": reason},
            )
        else:
            log.debug(message, extra={"error": reason})

    def _log_recovery(self) -> None:
        if self._failing is None:  # the usual case: no lock taken
            return
        with self._failure_lock:
            failing, self._failing = self._failing, None
        if failing is not None:
            lasted = time.monotonic() - failing[0]
            log.info(
                "the store takes writes again after %.1f s",
                lasted,
                extra={"outage_s": round(lasted, 1)},
            )

    def _translate_error(self, context: sa.engine.ExceptionContext) -> None:
        failure = self._store_failure(context.original_exception)
        if failure is not None:
            raise failure from context.original_exception

    def probe(self, now: datetime) -> None:
        """One real, committed write: the proof that the store can record a lease now."""
        with self._write() as conn:
            moved = conn.execute(
                store_probe.update().where(store_probe.c.id == 1).values(at=now)
            ).rowcount
            if not moved:
                conn.execute(store_probe.insert().values(id=1, at=now))

    def health(self, *, max_age: float = 2.0, wait: float = 3.0) -> str | None:
        """None when the store took a write within the last ``max_age`` seconds, else
        why not. At most one probe runs at a time and callers wait at most ``wait``
        seconds for it: a hung store is reported, never waited for."""
        with self._probe_lock:
            if self._probed is not None and time.monotonic() - self._probed[0] < max_age:
                return self._probed[1]
            if self._probe_running is None or self._probe_running.done():
                if self._probe_pool is None:
                    self._probe_pool = ThreadPoolExecutor(1, thread_name_prefix="dbaccess-probe")
                self._probe_running = self._probe_pool.submit(self._run_probe)
            running = self._probe_running
        try:
            return running.result(timeout=wait)  # type: ignore[no-any-return]
        except FutureTimeout:
            return f"the broker's state store did not take a write within {wait:g} s"

    def _run_probe(self) -> str | None:
        try:
            self.probe(datetime.now(UTC))
            failure = None
        except StoreUnavailable as exc:
            failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported by /healthz, not raised
            failure = f"the broker's state store failed: {type(exc).__name__}"
        with self._probe_lock:
            self._probed = (time.monotonic(), failure)
        return failure

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_lock:
            if self._writer is None:
                self._writer = self.engine.connect().execution_options(dbaccess_write=True)
            conn = self._writer
            try:
                with conn.begin():
                    if self.dialect == "postgresql":
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY}
                        )
                    yield conn
                self._log_recovery()
            except BaseException as exc:
                # Rolled back already. Statements on the driver's cursor bypass SQLAlchemy's
                # disconnect detection, so the connection is discarded, not pooled: a fresh
                # one next time rather than one that may have broken (a PostgreSQL store
                # restarting, say).
                self._writer = None
                with suppress(Exception):
                    conn.invalidate()
                with suppress(Exception):
                    conn.close()
                failure = self._store_failure(exc)
                if failure is not None:
                    self._log_failure("a store write failed", str(failure))
                    raise failure from exc
                if isinstance(exc, StoreUnavailable):
                    self._log_failure("a store write failed", str(exc))
                raise
