"""Leases: opened before the database user exists, activated, renewed, claimed for
revocation and settled; the caps a new one must fit; which ones are due."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.audit_chain import AuditTrail
from dbaccess.broker.store.database import chunks
from dbaccess.broker.store.driver_sql import DriverSql, driver_cursor
from dbaccess.broker.store.rows import ApprovalRequest, CapReached, Caps, Conflict, Lease
from dbaccess.broker.store.schema import LIVE_STATES, approval_requests, leases


def _check_caps(
    conn: Connection, sql: DriverSql, caps: Caps, subject: str, target: str, role: str
) -> None:
    cursor = driver_cursor(conn)
    cursor.execute(
        sql.live_counts,
        {
            "subject": subject,
            "target": target,
            "kind": "breakglass" if caps.breakglass else "session",
        },
    )
    rows = cursor.fetchall()
    # An unknown role (removed from the config since) counts as the heaviest one.
    heaviest = max(caps.weights.values(), default=1)
    counts = {
        "person_sessions": 1,
        "target_sessions": 1,
        "person_connections": caps.weights.get(role, heaviest),
        "target_connections": caps.weights.get(role, heaviest),
    }
    for is_mine, lease_role, count in rows:
        weight = caps.weights.get(lease_role, heaviest)
        counts["target_sessions"] += count
        counts["target_connections"] += count * weight
        if is_mine:
            counts["person_sessions"] += count
            counts["person_connections"] += count * weight
    for cap in ("person_sessions", "person_connections", "target_sessions", "target_connections"):
        limit = getattr(caps, cap)
        if limit is not None and counts[cap] > limit:
            raise CapReached(cap, counts[cap], limit)


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


class Leasing(AuditTrail):
    """Leases and their lifecycle."""

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
        access: str | None = None,
        gateway_verifier: str | None = None,
        on_call: dict[str, Any] | None = None,
        claimed_email: str | None = None,
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
            access=access,
            gateway_verifier=gateway_verifier,
            claimed_email=claimed_email,
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
        if access is not None:
            detail["access"] = access
        if on_call is not None:  # approvals waived: the shift they were waived for
            detail["on_call"] = on_call
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
            driver_cursor(conn).execute(self._sql.lease_insert, {**values, **times})
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
            cursor = driver_cursor(conn)
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
        *,
        gateway_verifier: str | None = None,
    ) -> Lease:
        """The new expiry; for a gateway session, with its verifier bound to it again.
        Conflict when the lease is no longer active (a revocation came first): then nothing
        is written, no session.renewed either."""
        changes: dict[str, Any] = {"expires_at": expires_at}
        if gateway_verifier is not None:
            changes["gateway_verifier"] = gateway_verifier
        with self._write() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).one()
            changed = conn.execute(
                leases.update()
                .where(leases.c.id == lease_id, leases.c.state == "active")
                .values(**changes)
            )
            if changed.rowcount == 0:
                raise Conflict(f"session {lease_id} is {row.state}, no longer active")
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
            for chunk in chunks(list(cause_of)):
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
                .values(state="revoking", revoke_cause=cause, next_attempt_at=now, **claim)
            )
        if retried:
            conn.execute(leases.update().where(leases.c.id.in_(retried)).values(**claim))
        self._append_audits(
            conn,
            now,
            [
                (
                    "session.revoke_requested",
                    actor or row.subject,
                    row.id,
                    {
                        "cause": cause_of[row.id],
                        "db_user": row.db_user,
                        "target": row.target,
                        **(origin or {}),
                    },
                )
                for row in marked
            ],
        )
        for row in rows:
            if row.state not in ("creating", "active", "revoking"):
                continue
            fields = dict(row._mapping, **claim)
            if row.state != "revoking":
                fields.update(state="revoking", revoke_cause=cause_of[row.id], next_attempt_at=now)
            claimed.append(Lease(**fields))
        return claimed

    def settle_revocations(
        self, outcomes: list[tuple[Lease, str | None, datetime | None]], now: datetime, owner: str
    ) -> None:
        """In one transaction: close the leases whose users are gone (error None), record
        failed attempts with their retry time, and release this replica's claims.
        Statements per chunk, as in claim_for_revocation."""
        with self._write() as conn:
            for chunk in chunks(outcomes):
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
                failed = [
                    (lease, error, retry_at)
                    for lease, error, retry_at in chunk
                    if error is not None and lease.id in mine
                ]
                if done:
                    conn.execute(
                        leases.update()
                        .where(leases.c.id.in_([lease.id for lease in done]))
                        .values(
                            state="revoked",
                            revoked_at=now,
                            last_error=None,
                            claimed_by=None,
                            claim_expires_at=None,
                        )
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
                            {
                                "b_id": lease.id,
                                "b_attempts": lease.attempts + 1,
                                "b_error": (error or "")[:500],
                                "b_retry_at": retry_at,
                            }
                            for lease, error, retry_at in failed
                        ],
                    )
                self._append_audits(
                    conn,
                    now,
                    [
                        (
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
                        for lease in done
                    ]
                    + [
                        (
                            "session.revoke_failed",
                            lease.subject,
                            lease.id,
                            {
                                "db_user": lease.db_user,
                                "target": lease.target,
                                "error": (error or "")[:500],
                                "attempt": lease.attempts + 1,
                                "retry_at": retry_at,
                            },
                        )
                        for lease, error, retry_at in failed
                    ],
                )

    def retry_now(self, target: str, now: datetime) -> int:
        """Make every failed revocation on ``target`` due now (the target answers again:
        waiting out a backoff that grew during the outage would leave expired users)."""
        with self._write() as conn:
            return int(
                conn.execute(
                    leases.update()
                    .where(
                        leases.c.target == target,
                        leases.c.state == "revoking",
                        leases.c.next_attempt_at > now,
                    )
                    .values(next_attempt_at=now)
                ).rowcount
            )

    def get(self, lease_id: str) -> Lease | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).first()
        return None if row is None else Lease(**row._mapping)

    def gateway_lease(self, db_user: str, now: datetime) -> Lease | None:
        """The active, unexpired gateway lease whose user a client names at the gateway."""
        query = (
            sa.select(leases)
            .where(
                leases.c.db_user == db_user,
                leases.c.access == "gateway",
                leases.c.state == "active",
                leases.c.expires_at > now,
            )
            .order_by(leases.c.created_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else Lease(**row._mapping)

    def standing(self, lease_ids: Iterable[str]) -> dict[str, tuple[str, datetime, str | None]]:
        """State, expiry and revocation cause of each lease (one that is gone is missing)."""
        ids = list(lease_ids)
        found: dict[str, tuple[str, datetime, str | None]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(
                        leases.c.id, leases.c.state, leases.c.expires_at, leases.c.revoke_cause
                    ).where(leases.c.id.in_(ids[start : start + 500]))
                )
                found.update({str(r.id): (r.state, r.expires_at, r.revoke_cause) for r in rows})
        return found

    def gateway_standing(self, lease_ids: Iterable[str]) -> dict[str, Lease]:
        """The leases (one that is gone is missing), for the gateway's watcher: their
        state, expiry and cause, and what checks that the expiry is the broker's."""
        ids = list(lease_ids)
        found: dict[str, Lease] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(
                    sa.select(leases).where(leases.c.id.in_(ids[start : start + 500]))
                )
                found.update({str(r.id): Lease(**r._mapping) for r in rows})
        return found

    def live_leases(self) -> list[Lease]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(leases).where(leases.c.state.in_(LIVE_STATES))).all()
        return [Lease(**row._mapping) for row in rows]

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
                sa.select(leases).where(*where).order_by(leases.c.expires_at).limit(limit)
            ).all()
        return [Lease(**row._mapping) for row in rows]
