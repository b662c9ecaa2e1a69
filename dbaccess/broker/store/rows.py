"""What the store hands back (frozen rows) and the exceptions it raises."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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
    access: str | None = None  # "gateway", or None (direct)
    gateway_verifier: str | None = field(default=None, repr=False)
    claimed_email: str | None = field(default=None, repr=False)  # checks only, never shown


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
    tier: str | None = None  # the rule's tier whose approvals it needs (None: the rule's)
    claimed_email: str | None = field(default=None, repr=False)  # checks only, never shown

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
