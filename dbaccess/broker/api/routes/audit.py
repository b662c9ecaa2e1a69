"""``GET /v1/audit``: the trail for auditors, newest first, a page at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from dbaccess.broker.api.audit_pages import make_cursor, read_cursor
from dbaccess.broker.api.deps import ContextDep, PrincipalDep
from dbaccess.broker.audit_events import AUDIT_EVENTS
from dbaccess.broker.services import refusals
from dbaccess.wire import AuditEntry

# Records per page, by default and at most; the header with the next page's cursor.
AUDIT_PAGE_DEFAULT = 100
AUDIT_PAGE_MAX = 1000
NEXT_CURSOR = "X-Next-Cursor"

router = APIRouter()


@router.get(
    "/v1/audit",
    response_model=list[AuditEntry],
    responses={200: {"headers": {NEXT_CURSOR: {
        "description": "present when older records match: pass it as ?before= for "
        "the next page", "schema": {"type": "string"}}}}},
)
def read_audit(
    response: Response,
    ctx: ContextDep,
    who: PrincipalDep,
    since: datetime | None = None,
    user: Annotated[str | None, Query(max_length=320)] = None,  # an email's longest
    target: Annotated[str | None, Query(max_length=64)] = None,
    type: Annotated[str | None, Query(max_length=64)] = None,  # noqa: A002 - public name
    before: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = AUDIT_PAGE_DEFAULT,
) -> list[AuditEntry]:
    """The newest records first; every filter applies before ``limit``. When older
    records match, the ``X-Next-Cursor`` header carries the cursor of the next page."""
    if not who.groups & set(ctx.settings.broker.auditor_groups):
        raise refusals.Denied(
            "denied",
            "reading the audit trail needs an auditor group",
            "ask for membership of an auditor group",
        )
    if type is not None and type not in AUDIT_EVENTS:
        raise refusals.Invalid(
            "invalid_request",
            f"type: '{type}' is not an audit event type",
            f"one of: {', '.join(AUDIT_EVENTS)}",
        )
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    filters: dict[str, object] = {
        "since": since.isoformat() if since else None,
        "user": user,
        "target": target,
        "type": type,
    }
    start = read_cursor(before, filters) if before is not None else None
    # A person is a subject or an email: an email stands for every subject that has
    # used it (the trail is keyed by subject, which people rarely know by heart).
    people = None if user is None else ctx.store.subjects_known_as(user)
    records, older = ctx.store.audit_page(
        limit=limit, before=start, since=since, subjects=people, event=type, target=target
    )
    if older is not None:
        response.headers[NEXT_CURSOR] = make_cursor(older, filters)
    return [
        AuditEntry(
            seq=r.seq,
            at=r.at,
            event=r.event,
            subject=r.subject,
            lease_id=r.lease_id,
            detail=r.detail,
        )
        for r in records
    ]
