"""Leases and audit records (SQLAlchemy Core; SQLite in WAL mode by default). The few
statements every issuance runs go to the driver's cursor directly (see ``_DriverSql``).

A lease is written *before* its database user is created (state ``creating``), so a crash
at any step leaves a row the reaper can finish: it revokes every lease that is due,
including half-created ones. Audit records are appended in the same transaction as the
state change they describe, never updated, and each carries the hash of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from dbaccess.timestamps import json_default

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
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin_immediate)
        if migrate:
            upgrade(self.engine)
        self._write_lock = threading.Lock()  # one writer per process is enough
        self._sql = _DriverSql.for_dialect(self.dialect)
        # The writer's connection, kept between transactions under ``_write_lock``: a pool
        # checkout and return (with its reset) cost as much as the statements of a write.
        self._writer: Connection | None = None

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()

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
            except BaseException:
                # Rolled back already. Statements on the driver's cursor bypass SQLAlchemy's
                # disconnect detection, so the connection is discarded, not pooled: a fresh
                # one next time rather than one that may have broken (a PostgreSQL store
                # restarting, say).
                self._writer = None
                with suppress(Exception):
                    conn.invalidate()
                conn.close()
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
        Returns the leases this replica now owns and must revoke."""
        claimable = sa.or_(
            leases.c.claimed_by.is_(None),
            leases.c.claimed_by == owner,
            leases.c.claim_expires_at <= now,
        )
        ids = [lease_id for lease_id, _ in wanted]
        with self._write() as conn:
            for lease_id, cause in wanted:
                marked = conn.execute(
                    leases.update()
                    .where(
                        leases.c.id == lease_id,
                        leases.c.state.in_(("creating", "active")),
                        claimable,
                    )
                    .values(
                        state="revoking",
                        revoke_cause=cause,
                        next_attempt_at=now,
                        claimed_by=owner,
                        claim_expires_at=now + ttl,
                    )
                ).rowcount
                if not marked:
                    conn.execute(
                        leases.update()
                        .where(leases.c.id == lease_id, leases.c.state == "revoking", claimable)
                        .values(claimed_by=owner, claim_expires_at=now + ttl)
                    )
                    continue
                row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).one()
                self._append_audit(
                    conn,
                    now,
                    "session.revoke_requested",
                    actor or row.subject,
                    lease_id,
                    {
                        "cause": cause,
                        "db_user": row.db_user,
                        "target": row.target,
                        **(origin or {}),
                    },
                )
            rows = conn.execute(
                sa.select(leases).where(
                    leases.c.id.in_(ids), leases.c.claimed_by == owner, leases.c.state == "revoking"
                )
            ).all()
        return [Lease(**row._mapping) for row in rows]

    def settle_revocations(
        self, outcomes: list[tuple[Lease, str | None, datetime | None]], now: datetime, owner: str
    ) -> None:
        """In one transaction: close the leases whose users are gone (error None), record
        failed attempts with their retry time, and release this replica's claims."""
        with self._write() as conn:
            for lease, error, retry_at in outcomes:
                mine = sa.and_(
                    leases.c.id == lease.id,
                    leases.c.claimed_by == owner,
                    leases.c.state == "revoking",
                )
                if error is None:
                    if conn.execute(
                        leases.update()
                        .where(mine)
                        .values(
                            state="revoked",
                            revoked_at=now,
                            last_error=None,
                            claimed_by=None,
                            claim_expires_at=None,
                        )
                    ).rowcount:
                        self._append_audit(
                            conn,
                            now,
                            "session.revoked",
                            lease.subject,
                            lease.id,
                            {
                                "cause": lease.revoke_cause,
                                "db_user": lease.db_user,
                                "target": lease.target,
                                "attempts": lease.attempts + 1,
                            },
                        )
                    continue
                if conn.execute(
                    leases.update()
                    .where(mine)
                    .values(
                        attempts=lease.attempts + 1,
                        last_error=error[:500],
                        next_attempt_at=retry_at,
                        claimed_by=None,
                        claim_expires_at=None,
                    )
                ).rowcount:
                    self._append_audit(
                        conn,
                        now,
                        "session.revoke_failed",
                        lease.subject,
                        lease.id,
                        {
                            "db_user": lease.db_user,
                            "target": lease.target,
                            "error": error[:500],
                            "attempt": lease.attempts + 1,
                            "retry_at": retry_at,
                        },
                    )

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

    def due(self, now: datetime, stale_before: datetime, limit: int = 100) -> list[Lease]:
        """Leases to revoke now: expired; still ``creating`` since before ``stale_before``
        (the broker died mid-issue, so nobody holds the password); or marked for
        revocation and due a retry."""
        expired = sa.or_(
            sa.and_(leases.c.state.in_(("creating", "active")), leases.c.expires_at <= now),
            sa.and_(leases.c.state == "creating", leases.c.created_at <= stale_before),
        )
        retry = sa.and_(
            leases.c.state == "revoking",
            sa.or_(leases.c.next_attempt_at.is_(None), leases.c.next_attempt_at <= now),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases)
                .where(sa.or_(expired, retry))
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


def _driver_cursor(conn: Connection) -> Any:
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


WRITE_LOCK_KEY = 0x64626163  # "dbac": the advisory lock that orders writers on PostgreSQL


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "dbaccess.broker:migrations")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN IMMEDIATE instead of pysqlite's BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Writers take the lock at BEGIN: a deferred transaction that reads and then writes can
    # fail at once with "database is locked" when another process writes meanwhile.
    immediate = conn.get_execution_options().get("dbaccess_write")
    # On the driver's connection, like the hot statements (see _DriverSql).
    _driver_cursor(conn).execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
