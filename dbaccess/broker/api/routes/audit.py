"""``GET /v1/audit``: the trail for auditors, newest first, a page at a time; and
``GET /v1/inventory``: the standing accounts of the targets, for the same people."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from dbaccess.broker.api.deps import PrincipalDep, ServiceDep
from dbaccess.broker.services import refusals
from dbaccess.wire import AuditEntry, InventoryReport

# Records per page, by default and at most; the header with the next page's cursor.
AUDIT_PAGE_DEFAULT = 100
AUDIT_PAGE_MAX = 1000
NEXT_CURSOR = "X-Next-Cursor"

router = APIRouter()


@router.get(
    "/v1/audit",
    response_model=list[AuditEntry],
    responses={
        200: {
            "headers": {
                NEXT_CURSOR: {
                    "description": "present when older records match: pass it as ?before= for "
                    "the next page",
                    "schema": {"type": "string"},
                }
            }
        }
    },
)
def read_audit(
    response: Response,
    service: ServiceDep,
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
    if since is not None:
        try:  # a time whose UTC falls outside years 1-9999 (0001-01-01T00:00+01:00)
            since.astimezone(UTC) if since.tzinfo is not None else since
        except OverflowError:
            raise refusals.Invalid(
                "invalid_request",
                "since: the time is out of range",
                "an ISO 8601 time, e.g. ?since=2026-12-01T00:00:00Z",
            ) from None
    page = service.audit.page(
        who, limit=limit, since=since, user=user, target=target, event=type, before=before
    )
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR] = page.next_cursor
    return page.entries


@router.get("/v1/inventory", response_model=InventoryReport)
def read_inventory(
    service: ServiceDep,
    who: PrincipalDep,
    target: Annotated[str | None, Query(max_length=64)] = None,
) -> InventoryReport:
    """Every login account of each target (or of ``target``) that is not a live dbaccess
    session user, with what makes it risky; ``status`` "finding" for every one neither
    the provisioner nor named by ``[inventory] allow``. Read from the databases now."""
    return service.inventory.report(who, target)
