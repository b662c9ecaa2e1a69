"""Leases and audit records (SQLAlchemy Core; SQLite in WAL mode by default). The few
statements every issuance runs go to the driver's cursor directly (see ``_DriverSql``).

Every committed transaction is on stable storage when ``commit`` returns (SQLite
``synchronous=FULL``; PostgreSQL never with ``synchronous_commit=off``): a password leaves
the broker only after its lease and audit records are, so a power cut cannot lose the
record of a session someone holds. A store that cannot be read or written raises
``StoreUnavailable`` (the API's 503), whatever the driver's error class.

A lease is written *before* its database user is created (state ``creating``), so a crash
at any step leaves a row the reaper can finish: it revokes every lease that is due,
including half-created ones. Audit records are appended in the same transaction as the
state change they describe, never updated, and each carries the hash of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from dbaccess.timestamps import json_default

_T = TypeVar("_T")
log = logging.getLogger("dbaccess.broker.store")

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Store naive UTC, hand back aware UTC (SQLite keeps no time zone)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


leases = sa.Table(
    "leases",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("subject", sa.String(255), nullable=False, index=True),
    sa.Column("email", sa.String(255)),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("engine", sa.String(16), nullable=False),
    sa.Column("db_user", sa.String(64), nullable=False),
    # creating -> active -> revoking -> revoked; a failed creation goes straight to revoking.
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("rule", sa.String(64)),
    sa.Column("reason", sa.String(500)),
    sa.Column("ticket", sa.String(100)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("revoke_cause", sa.String(32)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime),
    sa.Column("last_error", sa.String(500)),
    # The replica working on this lease, until claim_expires_at (see Store.claim).
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claim_expires_at", UTCDateTime),
    # "session", or "breakglass" (incident set, statements logged, reviewed afterwards).
    sa.Column("kind", sa.String(16), nullable=False, server_default="session"),
    sa.Column("incident", sa.String(100)),
    sa.Column("drill", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("request_id", sa.String(36)),
    sa.Column("user_agent", sa.String(255)),
    # Break-glass only: open -> closed, by someone other than the subject.
    sa.Column("review_state", sa.String(16), index=True),
    sa.Column("reviewed_by", sa.String(255)),
    sa.Column("reviewed_at", UTCDateTime),
    sa.Column("review_note", sa.String(2000)),
)

approval_requests = sa.Table(
    "approval_requests",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("subject", sa.String(255), nullable=False, index=True),
    sa.Column("email", sa.String(255)),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("duration_seconds", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("ticket", sa.String(100)),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("approvals_required", sa.Integer, nullable=False),
    sa.Column("approver_groups", sa.Text, nullable=False),  # JSON list
    # pending -> approved -> used; or denied / expired / withdrawn (by the requester)
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("approvals", sa.Text, nullable=False, server_default="[]"),  # JSON [{by, at}]
    sa.Column("denied_by", sa.String(255)),
    sa.Column("deny_reason", sa.String(500)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("decided_at", UTCDateTime),
    sa.Column("lease_id", sa.String(36)),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(255)),
    sa.Column("lease_id", sa.String(36), index=True),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# The webhook outbox: an event is stored (once per webhook) before it is sent, so a crash
# or restart delays a break-glass notification but does not lose it. Webhooks are named by
# the SHA-256 of their URL: Slack-style URLs carry a token that must not land in the store.
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("webhook", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # pending -> delivered, or failed after the last attempt
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.String(200)),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("claim_expires_at", UTCDateTime),
    sa.Column("settled_at", UTCDateTime),
)

# The identity provider's last good key set (JWKS), one row per issuer: a restarted broker
# verifies tokens with it while the provider is unreachable (see ``broker/keys.py``).
identity_keys = sa.Table(
    "identity_keys",
    metadata,
    sa.Column("issuer", sa.String(500), primary_key=True),
    sa.Column("jwks_uri", sa.String(500), nullable=False),
    sa.Column("jwks", sa.Text, nullable=False),
    sa.Column("fetched_at", UTCDateTime, nullable=False),
)

# One row that ``/healthz`` rewrites: only a committed write proves the store can record
# a lease now (a failing or full disk may still answer reads).
store_probe = sa.Table(
    "store_probe",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

LIVE_STATES = ("creating", "active", "revoking")
GENESIS = "0" * 64  # the "previous hash" of the first audit record


@dataclass(frozen=True)
class Lease:
    id: str
    subject: str
    email: str | None
    target: str
    role: str
    engine: str
    db_user: str
    state: str
    rule: str | None
    reason: str | None
    ticket: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoke_cause: str | None
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    kind: str = "session"
    incident: str | None = None
    drill: bool = False
    request_id: str | None = None
    user_agent: str | None = None
    review_state: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_note: str | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    subject: str
    email: str | None
    target: str
    role: str
    duration_seconds: int
    reason: str
    ticket: str | None
    rule: str
    approvals_required: int
    approver_groups: list[str]
    state: str
    approvals: list[dict[str, Any]]
    denied_by: str | None
    deny_reason: str | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    lease_id: str | None

    @classmethod
    def from_row(cls, row: Any) -> ApprovalRequest:
        values = dict(row._mapping)
        values["approver_groups"] = json.loads(values["approver_groups"])
        values["approvals"] = json.loads(values["approvals"])
        return cls(**values)


class StoreUnavailable(Exception):
    """The store cannot be read or written now (a failing or full disk, a server that is
    gone): whatever the call was about to record was not recorded. The message names the
    driver's reason and is safe to show (no statement, no parameters)."""


class Conflict(Exception):
    """A state change the current state does not allow (told to the caller as is)."""


@dataclass(frozen=True)
class Caps:
    """The caps a new lease must stay within, counted over the target's live leases of
    the same kind (break-glass leases have a budget of their own). ``weights``: each
    role's connection_limit, so a lease counts as the connections its user may open."""

    breakglass: bool
    weights: dict[str, int]
    person_sessions: int | None = None
    person_connections: int | None = None
    target_sessions: int | None = None
    target_connections: int | None = None


class CapReached(Exception):
    """A new lease would pass a cap: ``cap`` (a Caps field), the count with the new
    lease, and the cap. Nothing was written."""

    def __init__(self, cap: str, would_be: int, limit: int) -> None:
        super().__init__(cap)
        self.cap, self.would_be, self.limit = cap, would_be, limit


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    event: str
    subject: str | None
    lease_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def _record_hash(
    prev_hash: str, at: datetime, event: str, subject: str | None, lease_id: str | None, detail: str
) -> str:
    body = json.dumps(
        [prev_hash, at.isoformat(), event, subject, lease_id, detail], separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()


class Store:
    """The broker's state. Several broker processes may share one store (PostgreSQL, or
    SQLite on one host): writes are serialised by the database itself (``BEGIN IMMEDIATE``
    on SQLite, a transaction-scoped advisory lock on PostgreSQL), so the audit chain has
    one order, and leases are claimed before revocation so no two replicas revoke one."""

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
        self._sql = _DriverSql.for_dialect(self.dialect)
        # The writer's connection, kept between transactions under ``_write_lock``: a pool
        # checkout and return (with its reset) cost as much as the statements of a write.
        self._writer: Connection | None = None
        # /healthz's write probe: one at a time, on a thread of its own, so a hung store
        # holds one thread, not every caller of /healthz.
        self._probe_lock = threading.Lock()
        self._probe_pool: ThreadPoolExecutor | None = None
        self._probe_running: Any = None  # the Future of the probe under way
        self._probed: tuple[float, str | None] | None = None  # (monotonic time, failure)

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
            log.error("cannot connect to the store", extra={"error": reason})
            reason = "cannot connect to the store's server (the broker's log says why)"
        return StoreUnavailable(f"the broker's state store failed: {reason}")

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

    def load_identity_keys(self, issuer: str) -> tuple[str, dict[str, Any], datetime] | None:
        """The last good key set of ``issuer`` kept by ``save_identity_keys``:
        (jwks_uri, JWKS, fetched_at), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(identity_keys).where(identity_keys.c.issuer == issuer)
            ).first()
        if row is None:
            return None
        return row.jwks_uri, json.loads(row.jwks), row.fetched_at

    def save_identity_keys(
        self, issuer: str, jwks_uri: str, jwks: dict[str, Any], now: datetime
    ) -> None:
        values = {"jwks_uri": jwks_uri, "jwks": json.dumps(jwks, sort_keys=True), "fetched_at": now}
        with self._write() as conn:
            moved = conn.execute(
                identity_keys.update().where(identity_keys.c.issuer == issuer).values(**values)
            ).rowcount
            if not moved:
                conn.execute(identity_keys.insert().values(issuer=issuer, **values))

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
                    log.error("a store write failed", extra={"error": str(failure)})
                    raise failure from exc
                if isinstance(exc, StoreUnavailable):
                    log.error("a store write failed", extra={"error": str(exc)})
                raise

    def _append_audit(
        self,
        conn: Connection,
        now: datetime,
        event: str,
        subject: str | None,
        lease_id: str | None,
        detail: dict[str, Any],
    ) -> None:
        cursor = _driver_cursor(conn)
        cursor.execute(self._sql.last_hash)
        last = cursor.fetchone()
        prev = last[0] if last else GENESIS
        text = json.dumps(detail, sort_keys=True, default=json_default)
        cursor.execute(
            self._sql.audit_insert,
            {
                "at": self._sql.time(now),
                "event": event,
                "subject": subject,
                "lease_id": lease_id,
                "detail": text,
                "prev_hash": prev,
                "hash": _record_hash(prev, now, event, subject, lease_id, text),
            },
        )

    def _append_audits(
        self,
        conn: Connection,
        now: datetime,
        records: list[tuple[str, str | None, str | None, dict[str, Any]]],
    ) -> None:
        """``_append_audit`` for many records: the chain's last hash is read once and the
        rows go in with one executemany."""
        if not records:
            return
        cursor = _driver_cursor(conn)
        cursor.execute(self._sql.last_hash)
        last = cursor.fetchone()
        prev = last[0] if last else GENESIS
        at = self._sql.time(now)
        rows = []
        for event, subject, lease_id, detail in records:
            text = json.dumps(detail, sort_keys=True, default=json_default)
            digest = _record_hash(prev, now, event, subject, lease_id, text)
            rows.append({"at": at, "event": event, "subject": subject, "lease_id": lease_id,
                         "detail": text, "prev_hash": prev, "hash": digest})
            prev = digest
        cursor.executemany(self._sql.audit_insert, rows)

    def record(
        self,
        now: datetime,
        event: str,
        subject: str | None,
        detail: dict[str, Any],
        lease_id: str | None = None,
    ) -> None:
        """An audit record that changes no lease (e.g. a denial)."""
        with self._write() as conn:
            self._append_audit(conn, now, event, subject, lease_id, detail)

    def open_lease(
        self,
        *,
        now: datetime,
        subject: str,
        email: str | None,
        target: str,
        role: str,
        engine: str,
        db_user: str,
        rule: str | None,
        reason: str | None,
        ticket: str | None,
        expires_at: datetime,
        source: str | None,
        user_agent: str | None = None,
        kind: str = "session",
        incident: str | None = None,
        drill: bool = False,
        request: ApprovalRequest | None = None,
        caps: Caps | None = None,
    ) -> Lease:
        """Record the lease (state ``creating``) before its user exists. With ``request``,
        that approved request is consumed in the same transaction: it grants one session.
        With ``caps``, the live leases are counted in that transaction too (under the write
        lock every replica takes), so concurrent requests cannot pass a cap together:
        CapReached, and nothing written, when this lease would."""
        lease_id = str(uuid.uuid4())
        values: dict[str, Any] = dict(
            id=lease_id,
            subject=subject,
            email=email,
            target=target,
            role=role,
            engine=engine,
            db_user=db_user,
            state="creating",
            rule=rule,
            reason=reason,
            ticket=ticket,
            created_at=now,
            expires_at=expires_at,
            attempts=0,
            kind=kind,
            incident=incident,
            drill=drill,
            request_id=request.id if request else None,
            user_agent=user_agent,
            review_state="open" if kind == "breakglass" else None,
        )
        detail: dict[str, Any] = {
            "email": email,
            "target": target,
            "role": role,
            "db_user": db_user,
            "rule": rule,
            "reason": reason,
            "ticket": ticket,
            "expires_at": expires_at,
            "source": source,
            "user_agent": user_agent,
        }
        if kind == "breakglass":
            detail.update(incident=incident, drill=drill)
        if request is not None:
            detail.update(request_id=request.id, approved_by=[a["by"] for a in request.approvals])
        with self._write() as conn:
            if caps is not None:
                _check_caps(conn, self._sql, caps, subject, target, role)
            if request is not None:
                used = conn.execute(
                    approval_requests.update()
                    .where(
                        approval_requests.c.id == request.id,
                        approval_requests.c.state == "approved",
                        approval_requests.c.expires_at > now,
                    )
                    .values(state="used", lease_id=lease_id)
                ).rowcount
                if not used:
                    raise Conflict(f"request {request.id} is no longer approved and unused")
            times = {"created_at": self._sql.time(now), "expires_at": self._sql.time(expires_at)}
            _driver_cursor(conn).execute(self._sql.lease_insert, {**values, **times})
            event = "breakglass.requested" if kind == "breakglass" else "session.requested"
            self._append_audit(conn, now, event, subject, lease_id, detail)
        row: dict[str, Any] = {column.name: values.get(column.name) for column in leases.columns}
        # as the store hands times back: in UTC, whatever zone the caller's were in
        row.update(created_at=now.astimezone(UTC), expires_at=expires_at.astimezone(UTC))
        return Lease(**row)

    def activate(self, lease: Lease, now: datetime) -> Lease:
        """``lease`` as ``open_lease`` returned it becomes active — unless it left state
        ``creating`` meanwhile (revoked while its user was being made): then it is returned
        as it is now."""
        with self._write() as conn:
            cursor = _driver_cursor(conn)
            cursor.execute(self._sql.activate, {"id": lease.id})
            if cursor.rowcount != 1:
                row = conn.execute(sa.select(leases).where(leases.c.id == lease.id)).one()
                return Lease(**row._mapping)
            detail: dict[str, Any] = {
                "target": lease.target,
                "role": lease.role,
                "db_user": lease.db_user,
                "rule": lease.rule,
                "expires_at": lease.expires_at,
            }
            if lease.kind == "breakglass":
                detail.update(incident=lease.incident, drill=lease.drill)
            if lease.request_id:
                detail["request_id"] = lease.request_id
            event = "breakglass.granted" if lease.kind == "breakglass" else "session.granted"
            self._append_audit(conn, now, event, lease.subject, lease.id, detail)
        return replace(lease, state="active")

    def renew(
        self,
        lease_id: str,
        now: datetime,
        expires_at: datetime,
        actor: str,
        origin: dict[str, Any] | None = None,
    ) -> Lease:
        with self._write() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).one()
            conn.execute(
                leases.update()
                .where(leases.c.id == lease_id, leases.c.state == "active")
                .values(expires_at=expires_at)
            )
            self._append_audit(
                conn,
                now,
                "session.renewed",
                actor,
                lease_id,
                {
                    "db_user": row.db_user,
                    "target": row.target,
                    "previous_expiry": row.expires_at,
                    "expires_at": expires_at,
                    **(origin or {}),
                },
            )
        lease = self.get(lease_id)
        assert lease is not None
        return lease

    def begin_revoke(
        self, lease_id: str, now: datetime, cause: str, actor: str | None = None
    ) -> Lease | None:
        """Mark a lease for revocation now; None if it is already being (or was) revoked."""
        with self._write() as conn:
            changed = conn.execute(
                leases.update()
                .where(leases.c.id == lease_id, leases.c.state.in_(("creating", "active")))
                .values(state="revoking", revoke_cause=cause, next_attempt_at=now)
            ).rowcount
            if changed:
                row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).one()
                self._append_audit(
                    conn,
                    now,
                    "session.revoke_requested",
                    actor or row.subject,
                    lease_id,
                    {"cause": cause, "db_user": row.db_user, "target": row.target},
                )
        return self.get(lease_id) if changed else None

    def claim_for_revocation(
        self,
        wanted: list[tuple[str, str]],
        now: datetime,
        owner: str,
        ttl: timedelta,
        actor: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> list[Lease]:
        """In one transaction: mark live leases ``revoking`` (with their cause) and claim
        them, plus claim ``revoking`` ones whose retry is due and that nobody else holds.
        Returns the leases this replica now owns and must revoke.

        A statement per chunk of leases, not per lease: in a storm of expiries the
        per-lease statements cost the reaper more Python time than the drops took
        (bench/revocation_storm.py). Rows are read first, under the write lock, so what
        the updates change is known without RETURNING."""
        claimable = sa.or_(
            leases.c.claimed_by.is_(None),
            leases.c.claimed_by == owner,
            leases.c.claim_expires_at <= now,
        )
        cause_of = dict(wanted)
        claimed: list[Lease] = []
        with self._write() as conn:
            for chunk in _chunks(list(cause_of)):
                rows = conn.execute(
                    sa.select(leases).where(leases.c.id.in_(chunk), claimable)
                ).all()
                claimed += self._claim_rows(conn, rows, cause_of, now, owner, ttl, actor, origin)
        return claimed

    def claim_due(
        self,
        now: datetime,
        stale_before: datetime,
        limit: int,
        owner: str,
        ttl: timedelta,
        *,
        target: str | None = None,
    ) -> list[Lease]:
        """``due`` and ``claim_for_revocation`` in one transaction and one read: what the
        reaper does in a storm, batch after batch."""
        with self._write() as conn:
            rows = conn.execute(
                sa.select(leases)
                .where(*_due_where(now, stale_before, target, ()))
                .order_by(leases.c.expires_at)
                .limit(limit)
            ).all()
            cause_of = {row.id: due_cause(row, now) for row in rows}
            return self._claim_rows(conn, rows, cause_of, now, owner, ttl, None, None)

    def _claim_rows(
        self,
        conn: Connection,
        rows: Sequence[Any],
        cause_of: dict[str, str],
        now: datetime,
        owner: str,
        ttl: timedelta,
        actor: str | None,
        origin: dict[str, Any] | None,
    ) -> list[Lease]:
        """Claim ``rows`` (read under the write lock, so nothing changed them since):
        mark the live ones revoking with their cause, one statement per cause."""
        claim = {"claimed_by": owner, "claim_expires_at": now + ttl}
        claimed: list[Lease] = []
        marked = [r for r in rows if r.state in ("creating", "active")]
        retried = [r.id for r in rows if r.state == "revoking"]
        by_cause: dict[str, list[str]] = {}
        for row in marked:
            by_cause.setdefault(cause_of[row.id], []).append(row.id)
        for cause, ids in by_cause.items():
            conn.execute(
                leases.update()
                .where(leases.c.id.in_(ids))
                .values(state="revoking", revoke_cause=cause, next_attempt_at=now,
                        **claim)
            )
        if retried:
            conn.execute(leases.update().where(leases.c.id.in_(retried)).values(**claim))
        self._append_audits(conn, now, [
            ("session.revoke_requested", actor or row.subject, row.id,
             {"cause": cause_of[row.id], "db_user": row.db_user, "target": row.target,
              **(origin or {})})
            for row in marked
        ])
        for row in rows:
            if row.state not in ("creating", "active", "revoking"):
                continue
            fields = dict(row._mapping, **claim)
            if row.state != "revoking":
                fields.update(state="revoking", revoke_cause=cause_of[row.id],
                              next_attempt_at=now)
            claimed.append(Lease(**fields))
        return claimed

    def settle_revocations(
        self, outcomes: list[tuple[Lease, str | None, datetime | None]], now: datetime, owner: str
    ) -> None:
        """In one transaction: close the leases whose users are gone (error None), record
        failed attempts with their retry time, and release this replica's claims.
        Statements per chunk, as in claim_for_revocation."""
        with self._write() as conn:
            for chunk in _chunks(outcomes):
                mine = {
                    row.id
                    for row in conn.execute(
                        sa.select(leases.c.id).where(
                            leases.c.id.in_([lease.id for lease, _, _ in chunk]),
                            leases.c.claimed_by == owner,
                            leases.c.state == "revoking",
                        )
                    ).all()
                }
                done = [lease for lease, error, _ in chunk if error is None and lease.id in mine]
                failed = [(lease, error, retry_at) for lease, error, retry_at in chunk
                          if error is not None and lease.id in mine]
                if done:
                    conn.execute(
                        leases.update()
                        .where(leases.c.id.in_([lease.id for lease in done]))
                        .values(state="revoked", revoked_at=now, last_error=None,
                                claimed_by=None, claim_expires_at=None)
                    )
                if failed:
                    conn.execute(
                        leases.update()
                        .where(leases.c.id == sa.bindparam("b_id"))
                        .values(
                            attempts=sa.bindparam("b_attempts"),
                            last_error=sa.bindparam("b_error"),
                            next_attempt_at=sa.bindparam("b_retry_at"),
                            claimed_by=None,
                            claim_expires_at=None,
                        ),
                        [
                            {"b_id": lease.id, "b_attempts": lease.attempts + 1,
                             "b_error": (error or "")[:500], "b_retry_at": retry_at}
                            for lease, error, retry_at in failed
                        ],
                    )
                self._append_audits(conn, now, [
                    ("session.revoked", lease.subject, lease.id,
                     {"cause": lease.revoke_cause, "db_user": lease.db_user,
                      "target": lease.target, "attempts": lease.attempts + 1})
                    for lease in done
                ] + [
                    ("session.revoke_failed", lease.subject, lease.id,
                     {"db_user": lease.db_user, "target": lease.target,
                      "error": (error or "")[:500], "attempt": lease.attempts + 1,
                      "retry_at": retry_at})
                    for lease, error, retry_at in failed
                ])

    def retry_now(self, target: str, now: datetime) -> int:
        """Make every failed revocation on ``target`` due now (the target answers again:
        waiting out a backoff that grew during the outage would leave expired users)."""
        with self._write() as conn:
            return int(conn.execute(
                leases.update()
                .where(leases.c.target == target, leases.c.state == "revoking",
                       leases.c.next_attempt_at > now)
                .values(next_attempt_at=now)
            ).rowcount)

    # -- approval requests ------------------------------------------------------------

    def create_request(
        self,
        *,
        now: datetime,
        subject: str,
        email: str | None,
        target: str,
        role: str,
        duration: timedelta,
        reason: str,
        ticket: str | None,
        rule: str,
        approvals_required: int,
        approver_groups: list[str],
        ttl: timedelta,
        source: str | None,
        user_agent: str | None,
    ) -> tuple[ApprovalRequest, bool]:
        """A new pending request, True — or, when ``subject`` already has an open one for
        ``role`` on ``target`` (see ``open_request``), that one and False."""
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "subject": subject,
            "email": email,
            "target": target,
            "role": role,
            "duration_seconds": int(duration.total_seconds()),
            "reason": reason,
            "ticket": ticket,
            "rule": rule,
            "approvals_required": approvals_required,
            "approver_groups": json.dumps(approver_groups),
            "state": "pending",
            "approvals": "[]",
            "created_at": now,
            "expires_at": now + ttl,
        }
        with self._write() as conn:
            # Checked and inserted under the store's write lock, which orders writers across
            # replicas too (BEGIN IMMEDIATE / advisory lock): two retries arriving at two
            # brokers at once still leave one open request.
            existing = conn.execute(
                _open_requests(now, subject, target, role).limit(1)
            ).first()
            if existing is not None:
                return ApprovalRequest.from_row(existing), False
            conn.execute(approval_requests.insert(), values)
            self._append_audit(
                conn,
                now,
                "request.created",
                subject,
                None,
                {
                    "request_id": values["id"],
                    "email": email,
                    "target": target,
                    "role": role,
                    "duration_seconds": values["duration_seconds"],
                    "reason": reason,
                    "ticket": ticket,
                    "rule": rule,
                    "approvals_required": approvals_required,
                    "approver_groups": approver_groups,
                    "expires_at": values["expires_at"],
                    "source": source,
                    "user_agent": user_agent,
                },
            )
        return self._existing_request(values["id"]), True

    def open_request(
        self, now: datetime, subject: str, target: str, role: str
    ) -> ApprovalRequest | None:
        """``subject``'s request for ``role`` on ``target`` that is still pending, or
        approved and unused, and not past its deadline — the one a retry reuses."""
        with self.engine.connect() as conn:
            row = conn.execute(_open_requests(now, subject, target, role).limit(1)).first()
        return None if row is None else ApprovalRequest.from_row(row)

    def ids_starting_with(
        self, table: sa.Table, prefix: str, *where: Any, limit: int = 6
    ) -> list[str]:
        """Ids of ``table`` rows that start with ``prefix`` (and match ``where``), at most
        a few: enough to tell unique from ambiguous. Callers allow only hex digits and
        dashes in ``prefix``, so it holds no LIKE wildcard; it is bound, never spliced."""
        # A whole id is looked up by the primary key: LIKE cannot use that index under a
        # PostgreSQL collation other than C, and a whole id is what scripts send.
        match = table.c.id == prefix if len(prefix) == 36 else table.c.id.like(prefix + "%")
        query = sa.select(table.c.id).where(match, *where).order_by(table.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(query)]

    def _existing_request(self, request_id: str) -> ApprovalRequest:
        found = self.get_request(request_id)
        assert found is not None  # callers just wrote it
        return found

    def get_request(self, request_id: str) -> ApprovalRequest | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(approval_requests).where(approval_requests.c.id == request_id)
            ).first()
        return None if row is None else ApprovalRequest.from_row(row)

    def requests(self, *, states: tuple[str, ...] | None = None) -> list[ApprovalRequest]:
        query = sa.select(approval_requests).order_by(approval_requests.c.created_at)
        if states is not None:
            query = query.where(approval_requests.c.state.in_(states))
        with self.engine.connect() as conn:
            return [ApprovalRequest.from_row(row) for row in conn.execute(query)]

    def _pending_request(self, conn: Connection, request_id: str, now: datetime) -> Any:
        row = conn.execute(
            sa.select(approval_requests).where(approval_requests.c.id == request_id)
        ).first()
        if row is None:
            raise LookupError(request_id)
        if row.state == "pending" and row.expires_at <= now:
            self._expire(conn, row, now)
            raise Conflict(f"request {request_id} expired at {row.expires_at:%Y-%m-%d %H:%M} UTC")
        if row.state != "pending":
            raise Conflict(f"request {request_id} is {row.state}, not pending")
        return row

    def approve_request(
        self, request_id: str, approver: str, now: datetime, origin: dict[str, Any]
    ) -> ApprovalRequest:
        """Add one approval; the request becomes ``approved`` with the last one needed.
        Raises LookupError (no such request) or Conflict (not pending, expired, own
        request, approved twice by one person)."""
        with self._write() as conn:
            row = self._pending_request(conn, request_id, now)
            if approver == row.subject:
                raise Conflict("nobody approves their own request")
            approvals = json.loads(row.approvals)
            if any(a["by"] == approver for a in approvals):
                raise Conflict(f"you already approved request {request_id}")
            approvals.append({"by": approver, "at": now.isoformat()})
            done = len(approvals) >= row.approvals_required
            conn.execute(
                approval_requests.update()
                .where(approval_requests.c.id == request_id)
                .values(
                    approvals=json.dumps(approvals),
                    state="approved" if done else "pending",
                    decided_at=now if done else None,
                )
            )
            self._append_audit(
                conn,
                now,
                "request.approved",
                approver,
                None,
                {
                    "request_id": request_id,
                    "requester": row.subject,
                    "target": row.target,
                    "role": row.role,
                    "approvals": len(approvals),
                    "approvals_required": row.approvals_required,
                    "complete": done,
                    **origin,
                },
            )
        return self._existing_request(request_id)

    def deny_request(
        self, request_id: str, by: str, reason: str, now: datetime, origin: dict[str, Any]
    ) -> ApprovalRequest:
        with self._write() as conn:
            row = self._pending_request(conn, request_id, now)
            conn.execute(
                approval_requests.update()
                .where(approval_requests.c.id == request_id)
                .values(state="denied", denied_by=by, deny_reason=reason[:500], decided_at=now)
            )
            self._append_audit(
                conn,
                now,
                "request.denied",
                by,
                None,
                {
                    "request_id": request_id,
                    "requester": row.subject,
                    "target": row.target,
                    "role": row.role,
                    "reason": reason[:500],
                    **origin,
                },
            )
        return self._existing_request(request_id)

    def withdraw_request(
        self, request_id: str, by: str, now: datetime, origin: dict[str, Any]
    ) -> ApprovalRequest:
        """The requester takes back a request that is pending, or approved and unused: it
        can no longer be approved or used. Raises LookupError or Conflict."""
        with self._write() as conn:
            row = conn.execute(
                sa.select(approval_requests).where(approval_requests.c.id == request_id)
            ).first()
            if row is None:
                raise LookupError(request_id)
            if row.subject != by:
                raise Conflict("only the requester withdraws a request")
            if row.state in ("pending", "approved") and row.expires_at <= now:
                self._expire(conn, row, now)
                raise Conflict(
                    f"request {request_id} expired at {row.expires_at:%Y-%m-%d %H:%M} UTC"
                )
            if row.state not in ("pending", "approved"):
                raise Conflict(f"request {request_id} is {row.state}: there is nothing to withdraw")
            conn.execute(
                approval_requests.update()
                .where(approval_requests.c.id == request_id)
                .values(state="withdrawn", decided_at=now)
            )
            self._append_audit(
                conn,
                now,
                "request.withdrawn",
                by,
                None,
                {
                    "request_id": request_id,
                    "target": row.target,
                    "role": row.role,
                    "was": row.state,
                    **origin,
                },
            )
        return self._existing_request(request_id)

    def _expire(self, conn: Connection, row: Any, now: datetime) -> None:
        conn.execute(
            approval_requests.update()
            .where(approval_requests.c.id == row.id)
            .values(state="expired", decided_at=now)
        )
        self._append_audit(
            conn,
            now,
            "request.expired",
            row.subject,
            None,
            {
                "request_id": row.id,
                "target": row.target,
                "role": row.role,
                "was": row.state,
                "expired_at": row.expires_at,
            },
        )

    def expire_requests(self, now: datetime) -> list[ApprovalRequest]:
        """Pending or approved-but-unused requests past their deadline become ``expired``."""
        due = (
            sa.select(approval_requests)
            .where(
                approval_requests.c.state.in_(("pending", "approved")),
                approval_requests.c.expires_at <= now,
            )
            .limit(500)
        )
        with self.engine.connect() as conn:
            if conn.execute(due.with_only_columns(approval_requests.c.id)).first() is None:
                return []  # the common case costs one read, no write lock
        with self._write() as conn:
            rows = conn.execute(due).all()
            for row in rows:
                self._expire(conn, row, now)
        return [ApprovalRequest.from_row(row) for row in rows]

    # -- webhook outbox ----------------------------------------------------------------

    def enqueue_notifications(
        self, now: datetime, event: str, body: dict[str, Any], webhooks: list[str]
    ) -> None:
        text = json.dumps(body, default=json_default)
        with self._write() as conn:
            conn.execute(
                notifications.insert(),
                [
                    {
                        "created_at": now,
                        "event": event,
                        "webhook": webhook,
                        "body": text,
                        "state": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                    for webhook in webhooks
                ],
            )

    def claim_notifications(
        self, now: datetime, owner: str, ttl: timedelta, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Due pending notifications nobody else holds, now held by ``owner``."""
        due = sa.and_(
            notifications.c.state == "pending",
            notifications.c.next_attempt_at <= now,
            sa.or_(
                notifications.c.claimed_by.is_(None),
                notifications.c.claimed_by == owner,
                notifications.c.claim_expires_at <= now,
            ),
        )
        with self.engine.connect() as conn:  # the common case: nothing due, no write lock
            if conn.execute(sa.select(notifications.c.id).where(due).limit(1)).first() is None:
                return []
        with self._write() as conn:
            ids = [
                row.id
                for row in conn.execute(
                    sa.select(notifications.c.id)
                    .where(due)
                    .order_by(notifications.c.id)
                    .limit(limit)
                )
            ]
            if not ids:
                return []
            conn.execute(
                notifications.update()
                .where(notifications.c.id.in_(ids))
                .values(claimed_by=owner, claim_expires_at=now + ttl)
            )
            rows = conn.execute(
                sa.select(notifications).where(notifications.c.id.in_(ids))
            ).all()
        return [dict(row._mapping) for row in rows]

    def settle_notification(
        self,
        notification_id: int,
        owner: str,
        now: datetime,
        *,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        """Delivered (error None); or failed once, to retry at ``retry_at``; or given up
        (``retry_at`` None), which is an audit record."""
        mine = sa.and_(
            notifications.c.id == notification_id, notifications.c.claimed_by == owner
        )
        with self._write() as conn:
            row = conn.execute(sa.select(notifications).where(mine)).first()
            if row is None:
                return
            values: dict[str, Any] = {
                "attempts": row.attempts + 1,
                "claimed_by": None,
                "claim_expires_at": None,
                "last_error": None if error is None else error[:200],
            }
            if error is None:
                values.update(state="delivered", settled_at=now)
            elif retry_at is not None:
                values.update(next_attempt_at=retry_at)
            else:
                values.update(state="failed", settled_at=now)
                self._append_audit(
                    conn,
                    now,
                    "notify.failed",
                    None,
                    None,
                    {"event": row.event, "attempts": row.attempts + 1, "error": error[:200]},
                )
            conn.execute(notifications.update().where(mine).values(**values))

    def pending_notifications(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(notifications)
                    .where(notifications.c.state == "pending")
                ).scalar_one()
            )

    # -- break-glass reviews -----------------------------------------------------------

    def open_reviews(self) -> list[Lease]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases)
                .where(leases.c.review_state == "open")
                .order_by(leases.c.created_at)
            ).all()
        return [Lease(**row._mapping) for row in rows]

    def close_review(
        self, lease_id: str, by: str, note: str, now: datetime, origin: dict[str, Any]
    ) -> Lease:
        with self._write() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).first()
            if row is None or row.kind != "breakglass":
                raise LookupError(lease_id)
            if row.review_state != "open":
                raise Conflict(f"the review of {lease_id} was closed by {row.reviewed_by}")
            if by == row.subject:
                raise Conflict("the user who broke the glass cannot close its review")
            conn.execute(
                leases.update()
                .where(leases.c.id == lease_id)
                .values(review_state="closed", reviewed_by=by, reviewed_at=now, review_note=note)
            )
            self._append_audit(
                conn,
                now,
                "review.closed",
                by,
                lease_id,
                {
                    "user": row.subject,
                    "target": row.target,
                    "incident": row.incident,
                    "drill": row.drill,
                    "note": note,
                    **origin,
                },
            )
        lease = self.get(lease_id)
        assert lease is not None
        return lease

    def get(self, lease_id: str) -> Lease | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).first()
        return None if row is None else Lease(**row._mapping)

    def sessions_of(self, subject: str, *, live_only: bool = True) -> list[Lease]:
        query = sa.select(leases).where(leases.c.subject == subject)
        if live_only:
            query = query.where(leases.c.state.in_(LIVE_STATES))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(leases.c.created_at)).all()
        return [Lease(**row._mapping) for row in rows]

    def subjects_known_as(self, person: str) -> set[str]:
        """``person`` as a subject, plus every subject that has asked for a session or an
        approval with ``person`` as its email (emails compared without letter case)."""
        found = {person}
        with self.engine.connect() as conn:
            for table in (leases, approval_requests):
                found.update(
                    str(row[0])
                    for row in conn.execute(
                        sa.select(table.c.subject)
                        .where(sa.func.lower(table.c.email) == person.lower())
                        .distinct()
                    )
                )
        return found

    def live_users(self, target: str) -> set[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases.c.db_user).where(
                    leases.c.target == target, leases.c.state.in_(LIVE_STATES)
                )
            ).all()
        return {str(row[0]) for row in rows}

    def due(
        self,
        now: datetime,
        stale_before: datetime,
        limit: int = 100,
        *,
        target: str | None = None,
        not_targets: Iterable[str] = (),
    ) -> list[Lease]:
        """Leases to revoke now: expired; still ``creating`` since before ``stale_before``
        (the broker died mid-issue, so nobody holds the password); or marked for
        revocation and due a retry. Only leases nobody holds a live claim on (one being
        revoked right now is not due again), of ``target`` if given, and of none of
        ``not_targets``."""
        where = _due_where(now, stale_before, target, not_targets)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases)
                .where(*where)
                .order_by(leases.c.expires_at)
                .limit(limit)
            ).all()
        return [Lease(**row._mapping) for row in rows]

    def audit_records(
        self,
        lease_id: str | None = None,
        *,
        since: datetime | None = None,
        subject: str | None = None,
        subjects: Iterable[str] | None = None,
        event: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        query = sa.select(audit).order_by(audit.c.seq)
        if lease_id is not None:
            query = query.where(audit.c.lease_id == lease_id)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if subject is not None:
            query = query.where(audit.c.subject == subject)
        if subjects is not None:
            query = query.where(audit.c.subject.in_(sorted(subjects)))
        if event is not None:
            query = query.where(audit.c.event == event)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [AuditRecord(**{**row._mapping, "detail": json.loads(row.detail)}) for row in rows]

    def audit_page(
        self,
        *,
        limit: int,
        before: int | None = None,
        since: datetime | None = None,
        subjects: Iterable[str] | None = None,
        event: str | None = None,
        target: str | None = None,
    ) -> tuple[list[AuditRecord], int | None]:
        """The newest ``limit`` records older than seq ``before`` that pass every filter,
        newest first, and the seq to continue before (None: nothing older matches). Every
        filter is in the query, before the LIMIT: a filter applied to a page afterwards
        would show too few records, or none, while older ones match."""
        query = sa.select(audit).order_by(audit.c.seq.desc()).limit(limit + 1)
        if before is not None:
            query = query.where(audit.c.seq < before)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if subjects is not None:
            query = query.where(audit.c.subject.in_(sorted(subjects)))
        if event is not None:
            query = query.where(audit.c.event == event)
        if target is not None:
            query = query.where(self._detail_text("target") == target)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        records = [
            AuditRecord(**{**row._mapping, "detail": json.loads(row.detail)})
            for row in rows[:limit]
        ]
        more = len(rows) > limit and bool(records)
        return records, (records[-1].seq if more else None)

    def _detail_text(self, key: str) -> Any:
        """The text of ``detail``'s top-level ``key`` (SQL NULL when absent), in SQL."""
        if self.dialect == "postgresql":
            return sa.func.json_extract_path_text(sa.cast(audit.c.detail, sa.JSON), key)
        return sa.func.json_extract(audit.c.detail, f"$.{key}")


def _check_caps(
    conn: Connection, sql: _DriverSql, caps: Caps, subject: str, target: str, role: str
) -> None:
    cursor = _driver_cursor(conn)
    cursor.execute(sql.live_counts, {
        "subject": subject, "target": target,
        "kind": "breakglass" if caps.breakglass else "session"})
    rows = cursor.fetchall()
    # An unknown role (removed from the config since) counts as the heaviest one.
    heaviest = max(caps.weights.values(), default=1)
    counts = {"person_sessions": 1, "target_sessions": 1,
              "person_connections": caps.weights.get(role, heaviest),
              "target_connections": caps.weights.get(role, heaviest)}
    for is_mine, lease_role, count in rows:
        weight = caps.weights.get(lease_role, heaviest)
        counts["target_sessions"] += count
        counts["target_connections"] += count * weight
        if is_mine:
            counts["person_sessions"] += count
            counts["person_connections"] += count * weight
    for cap in ("person_sessions", "person_connections", "target_sessions",
                "target_connections"):
        limit = getattr(caps, cap)
        if limit is not None and counts[cap] > limit:
            raise CapReached(cap, counts[cap], limit)


def _open_requests(now: datetime, subject: str, target: str, role: str) -> Any:
    return (
        sa.select(approval_requests)
        .where(
            approval_requests.c.subject == subject,
            approval_requests.c.target == target,
            approval_requests.c.role == role,
            approval_requests.c.state.in_(("pending", "approved")),
            approval_requests.c.expires_at > now,
        )
        .order_by(approval_requests.c.created_at.desc())
    )


# The columns open_lease writes; the others start NULL or at their server default.
_LEASE_COLUMNS = (
    "id", "subject", "email", "target", "role", "engine", "db_user", "state", "rule", "reason",
    "ticket", "created_at", "expires_at", "attempts", "kind", "incident", "drill", "request_id",
    "user_agent", "review_state",
)


@dataclass(frozen=True)
class _DriverSql:
    """The statements every issuance runs — lease insert, activation, audit append — as
    the driver's own SQL, run on its cursor inside the store's transaction.

    Through SQLAlchemy each cost ~0.05 ms of Python (compiled-cache lookup, events, result
    set-up), more than SQLite's own work, and an issuance runs six; on a machine whose cores
    the broker shares with the target database that is throughput lost (bench/issuance.py).
    Only constant table and column names are written into the SQL; every value is bound."""

    sqlite: bool
    lease_insert: str
    activate: str
    last_hash: str
    audit_insert: str
    live_counts: str

    @classmethod
    def for_dialect(cls, dialect: str) -> _DriverSql:
        sqlite = dialect == "sqlite"  # else PostgreSQL through psycopg (settings allow no other)

        def param(name: str) -> str:
            return f":{name}" if sqlite else f"%({name})s"

        def insert(table: sa.Table, columns: Iterable[str]) -> str:
            names = list(columns)
            assert set(names) <= set(table.columns.keys())
            return (
                f"INSERT INTO {table.name} ({', '.join(names)}) "
                f"VALUES ({', '.join(param(n) for n in names)})"
            )

        return cls(
            sqlite=sqlite,
            lease_insert=insert(leases, _LEASE_COLUMNS),
            activate=f"UPDATE leases SET state = 'active' WHERE id = {param('id')} "
            "AND state = 'creating'",
            last_hash="SELECT hash FROM audit ORDER BY seq DESC LIMIT 1",
            audit_insert=insert(audit, [c for c in audit.columns.keys() if c != "seq"]),
            live_counts=f"SELECT subject = {param('subject')}, role, count(*) FROM leases "
            f"WHERE target = {param('target')} AND kind = {param('kind')} AND state IN "
            f"({', '.join(repr(s) for s in LIVE_STATES)}) GROUP BY 1, 2",
        )

    def time(self, value: datetime) -> datetime | str:
        """A time as UTCDateTime stores it: naive UTC, and on SQLite in the text form
        SQLAlchemy writes (so reads through SQLAlchemy and comparisons in SQL agree)."""
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")  # as UTCDateTime does
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(" ", "microseconds") if self.sqlite else naive


def _due_where(
    now: datetime, stale_before: datetime, target: str | None, not_targets: Iterable[str]
) -> list[Any]:
    """The conditions of Store.due."""
    expired = sa.or_(
        sa.and_(leases.c.state.in_(("creating", "active")), leases.c.expires_at <= now),
        sa.and_(leases.c.state == "creating", leases.c.created_at <= stale_before),
    )
    retry = sa.and_(
        leases.c.state == "revoking",
        sa.or_(leases.c.next_attempt_at.is_(None), leases.c.next_attempt_at <= now),
    )
    unclaimed = sa.or_(leases.c.claimed_by.is_(None), leases.c.claim_expires_at <= now)
    where = [sa.or_(expired, retry), unclaimed]
    if target is not None:
        where.append(leases.c.target == target)
    if not_targets:
        where.append(leases.c.target.not_in(list(not_targets)))
    return where


def due_cause(lease: Any, now: datetime) -> str:
    """Why a due lease is revoked (its recorded cause, if already being revoked)."""
    if lease.state == "revoking":
        return str(lease.revoke_cause or "retry")
    return "expired" if lease.expires_at <= now else "creation_interrupted"


def _chunks(items: list[_T], size: int = 500) -> Iterator[list[_T]]:
    """``items`` in lists of at most ``size`` (bound parameters per statement stay few)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _driver_cursor(conn: Connection) -> Any:
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


WRITE_LOCK_KEY = 0x64626163  # "dbac": the advisory lock that orders writers on PostgreSQL


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "dbaccess.broker.store:migrations")
    with engine.begin() as conn:
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
    # On the driver's connection, like the hot statements (see _DriverSql). SQLAlchemy
    # does not translate errors raised in a "begin" listener: done here.
    try:
        _driver_cursor(conn).execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    except sqlite3.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StoreUnavailable(f"the broker's state store failed: {reason}") from exc
