"""Reading the audit trail (``GET /v1/audit``): for auditors only, newest first, every
filter before the limit, a page at a time (the cursors are services/audit_pages.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dbaccess.broker.audit_events import AUDIT_EVENTS
from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.broker.services.audit_pages import make_cursor, read_cursor
from dbaccess.broker.services.context import BrokerContext
from dbaccess.wire import AuditEntry


@dataclass(frozen=True)
class AuditPage:
    """One page of records, and the cursor of the next (older) one when more match."""

    entries: list[AuditEntry]
    next_cursor: str | None


class AuditTrail:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def page(
        self,
        principal: Principal,
        *,
        limit: int,
        since: datetime | None = None,
        user: str | None = None,
        target: str | None = None,
        event: str | None = None,
        before: str | None = None,
    ) -> AuditPage:
        """The newest ``limit`` records that match, older than the cursor ``before``."""
        if not principal.groups & set(self.ctx.settings.broker.auditor_groups):
            raise refusals.Denied(
                "denied",
                "reading the audit trail needs an auditor group",
                "ask for membership of an auditor group",
            )
        if event is not None and event not in AUDIT_EVENTS:
            raise refusals.Invalid(
                "invalid_request",
                f"type: '{event}' is not an audit event type",
                f"one of: {', '.join(AUDIT_EVENTS)}",
            )
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        filters: dict[str, object] = {
            "since": since.isoformat() if since else None,
            "user": user,
            "target": target,
            "type": event,
        }
        start = read_cursor(before, filters) if before is not None else None
        # A person is a subject or an email: an email stands for every subject that has
        # used it (the trail is keyed by subject, which people rarely know by heart).
        people = None if user is None else self.ctx.store.subjects_known_as(user)
        records, older = self.ctx.store.audit_page(
            limit=limit, before=start, since=since, subjects=people, event=event, target=target
        )
        return AuditPage(
            entries=[
                AuditEntry(
                    seq=r.seq,
                    at=r.at,
                    event=r.event,
                    subject=r.subject,
                    lease_id=r.lease_id,
                    detail=r.detail,
                )
                for r in records
            ],
            next_cursor=None if older is None else make_cursor(older, filters),
        )
