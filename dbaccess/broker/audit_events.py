"""Every event type the broker writes to its audit trail — one list, shared by the broker
(which refuses an unknown ``GET /v1/audit?type=``) and the docs. A test checks that every
event the broker's code records is listed here."""

from __future__ import annotations

AUDIT_EVENTS: tuple[str, ...] = (
    "session.requested",
    "session.granted",
    "session.denied",
    "session.renewed",
    "session.renew_denied",
    "session.undelivered",
    "session.revoke_requested",
    "session.revoked",
    "session.revoke_failed",
    "session.statements_sealed",
    "request.created",
    "request.reused",
    "request.approved",
    "request.denied",
    "request.decision_refused",
    "request.withdrawn",
    "request.expired",
    "breakglass.requested",
    "breakglass.granted",
    "breakglass.denied",
    "review.closed",
    "web.signed_in",
    "breakglass.drill_overdue",
    "reconcile.revoked",
    "notify.failed",
)
