"""Approval requests: created (or an open one reused), approved, denied, withdrawn and
expired."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.audit_chain import AuditTrail
from dbaccess.broker.store.rows import ApprovalRequest, Conflict
from dbaccess.broker.store.schema import approval_requests


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


class Requests(AuditTrail):
    """Approval requests."""

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
        tier: str | None = None,
        claimed_email: str | None = None,
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
            "tier": tier,
            "approvals_required": approvals_required,
            "approver_groups": json.dumps(approver_groups),
            "state": "pending",
            "approvals": "[]",
            "created_at": now,
            "expires_at": now + ttl,
            "claimed_email": claimed_email,
        }
        with self._write() as conn:
            # Checked and inserted under the store's write lock, which orders writers across
            # replicas too (BEGIN IMMEDIATE / advisory lock): two retries arriving at two
            # brokers at once still leave one open request.
            existing = conn.execute(_open_requests(now, subject, target, role).limit(1)).first()
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
                    "tier": tier,
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

    def requests(
        self, *, states: tuple[str, ...] | None = None, subject: str | None = None
    ) -> list[ApprovalRequest]:
        query = sa.select(approval_requests).order_by(approval_requests.c.created_at)
        if states is not None:
            query = query.where(approval_requests.c.state.in_(states))
        if subject is not None:  # one person's: filtered by the database, not in Python
            query = query.where(approval_requests.c.subject == subject)
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
        self,
        request_id: str,
        approver: str,
        now: datetime,
        origin: dict[str, Any],
        approver_email: str | None = None,
        *,
        email_verified: bool = True,
    ) -> ApprovalRequest:
        """Add one approval; the request becomes ``approved`` with the last one needed.
        Raises LookupError (no such request) or Conflict (not pending, expired, own
        request, approved twice by one person: the same subject, or the same email in any
        letter case, as ``Principal.same_person`` tells people apart: the requester's and
        the other approvers' claimed emails count, verified or not, since a match only
        refuses). An unverified ``approver_email`` is kept as the approval's ``claimed``,
        not its ``email``, which is read as who approved."""
        email = approver_email.casefold() if approver_email else None
        with self._write() as conn:
            row = self._pending_request(conn, request_id, now)
            requester = row.claimed_email or row.email  # claimed: before migration 0009
            if approver == row.subject or (email and email == (requester or "").casefold()):
                raise Conflict("nobody approves their own request")
            approvals = json.loads(row.approvals)
            if any(
                a["by"] == approver
                or (email and email == (a.get("email") or a.get("claimed") or "").casefold())
                for a in approvals
            ):
                raise Conflict(f"you already approved request {request_id}")
            approval = {"by": approver, "at": now.isoformat()}
            if approver_email:  # "email" is read as who approved: a verified one only
                approval["email" if email_verified else "claimed"] = approver_email
            approvals.append(approval)
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
