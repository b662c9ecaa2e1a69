"""Wire models shared by the CLI and the broker (JSON over HTTP, API version 1)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_serializer

from dbaccess.durations import MAX_SECONDS
from dbaccess.text import refuse_unsafe

# What a person types and others see (approvers, chat, auditors): no control characters,
# no text-direction overrides (dbaccess/text.py says why).
Text = Annotated[str, AfterValidator(refuse_unsafe)]

# A duration a request names: at most durations.MAX_SECONDS (a year). Targets and rules
# allow far less; the bound keeps absurd numbers (10**30 seconds once made a 500 from a
# date overflow) a 422 before any of them is consulted.
Seconds = Annotated[int, Field(gt=0, le=MAX_SECONDS)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class PublicConfig(_Wire):
    """``GET /v1/config``: what a CLI needs to log in. Public: contains no secret."""

    issuer: str
    client_id: str
    scopes: list[str]
    kind: Literal["oidc", "entra"] = "oidc"
    broker_version: str


class Identity(_Wire):
    """``GET /v1/me``: who the broker thinks you are."""

    subject: str
    email: str | None = None
    name: str | None = None
    groups: list[str] = Field(default_factory=list)


class TierInfo(_Wire):
    """A tier of the rule that asks more approvals of this role: beyond ``longer_than``
    (seconds), or at any length when that is null."""

    name: str
    approvals: int
    longer_than_seconds: int | None = None


class OnCallWaiver(_Wire):
    """A rule's approvals are waived for the people on call in ``source`` at one of
    ``levels``; ``until`` is the end of the caller's own shift when they are on call now."""

    source: str
    levels: list[int]
    until: datetime | None = None


class TargetAccess(_Wire):
    """``GET /v1/targets``: one target and role the caller may request, and on what terms
    (``approvals``: at the default duration; ``tiers``: where longer sessions land)."""

    target: str
    engine: str
    role: str
    max_duration_seconds: int
    default_duration_seconds: int
    reason_required: bool
    ticket_pattern: str | None = None
    approvals: int = 0
    access: str = "direct"  # or "gateway": reached through the gateway only
    tier: str | None = None  # the tier a request of the default duration lands in
    tiers: list[TierInfo] = Field(default_factory=list)
    on_call: OnCallWaiver | None = None  # approvals waived while on call


class SessionCreate(_Wire):
    """``POST /v1/sessions`` body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Text = Field(min_length=1, max_length=64)
    role: Text = Field(min_length=1, max_length=64)
    duration_seconds: Seconds | None = None
    reason: Text | None = Field(default=None, max_length=500)
    ticket: Text | None = Field(default=None, max_length=100)
    # An approved request of yours (``dbaccess connect --request ID``); it grants one session.
    request_id: Text | None = Field(default=None, max_length=36)


class BreakglassCreate(_Wire):
    """``POST /v1/breakglass`` body. Without ``target`` the broker picks the only one the
    break-glass policy names, or answers 409 ``target_required`` listing them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Text | None = Field(default=None, max_length=64)
    incident: Text = Field(min_length=1, max_length=100)
    reason: Text = Field(min_length=1, max_length=500)
    duration_seconds: Seconds | None = None
    drill: bool = False


class BreakglassPolicy(_Wire):
    """``GET /v1/breakglass``: whether the caller may break the glass, and where."""

    allowed: bool
    targets: dict[str, str] = Field(default_factory=dict)  # target -> elevated role
    # target -> engine: the CLI checks the client is installed before the glass is broken
    engines: dict[str, str] = Field(default_factory=dict)
    incident_pattern: str | None = None
    max_duration_seconds: int | None = None
    # [breakglass] drill_every: how often a drill is due, when the last one (anyone's) was,
    # and whether one is overdue
    drill_every_seconds: int | None = None
    last_drill: datetime | None = None
    drill_overdue: bool = False


class DrillInfo(_Wire):
    """``GET /v1/drills``: one person who has broken the glass (drills included)."""

    subject: str
    email: str | None = None
    last_drill: datetime | None = None  # never: null
    breakglass_sessions: int  # drills included
    overdue: bool  # no drill within [breakglass] drill_every


class ApprovalInfo(_Wire):
    by: str
    at: datetime


class RequestInfo(_Wire):
    """An approval request (``POST /v1/sessions`` 202, ``GET /v1/requests``)."""

    id: str
    subject: str
    email: str | None = None
    target: str
    role: str
    duration_seconds: int
    reason: str
    ticket: str | None = None
    rule: str
    tier: str | None = None  # the rule's tier whose approvals it needs (None: the rule's)
    state: Literal["pending", "approved", "denied", "expired", "used", "withdrawn"]
    approvals_required: int
    approver_groups: list[str]
    approvals: list[ApprovalInfo] = Field(default_factory=list)
    denied_by: str | None = None
    deny_reason: str | None = None
    created_at: datetime
    expires_at: datetime
    can_approve: bool = False  # the caller may approve or deny it


class RequestDecision(_Wire):
    """``POST /v1/requests/{id}/deny`` body (approve takes an optional one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Text | None = Field(default=None, max_length=500)


class ReviewInfo(_Wire):
    """A break-glass session awaiting (or after) its post-incident review."""

    id: str
    subject: str
    email: str | None = None
    target: str
    role: str
    db_user: str
    incident: str | None = None
    reason: str | None = None
    drill: bool = False
    state: str
    created_at: datetime
    expires_at: datetime
    review_state: str | None = None
    reviewed_by: str | None = None
    review_note: str | None = None
    # on closing: the SHA-256 of the incident's report the close recorded
    report_sha256: str | None = None


class ReviewFlag(_Wire):
    """Something an incident review points a reviewer at: ``kind`` is one of
    before_incident, after_review, ddl, bulk_read, outside_scope, late_revocation,
    broken_chain; ``session_id`` and ``seq`` (a statement) say where."""

    kind: str
    message: str
    session_id: str | None = None
    seq: int | None = None


class ReviewStatement(_Wire):
    """One statement of a break-glass session as the review shows it."""

    seq: int
    started: datetime
    duration: float | None = None  # None: from a database's log, which has no durations
    sql: str
    classes: list[str]  # statement classes (read, write, ddl ...); ["unparsed"] if unknown
    rows: int | None = None
    status: str
    sqlstate: str | None = None
    rule: str | None = None


class ReviewSession(_Wire):
    """A break-glass session of the incident: its lease, its ending, its statements."""

    id: str
    subject: str
    email: str | None = None
    target: str
    role: str
    db_user: str
    reason: str | None = None
    drill: bool = False
    state: str
    access: str | None = None  # "gateway", or None (direct: no statement records)
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None  # an end asked for before expiry, or the expiry
    revoked_at: datetime | None = None  # when the database user was gone
    revoke_cause: str | None = None
    review_state: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_note: str | None = None
    review_report_sha256: str | None = None  # what the review's close recorded
    approvals: list[dict[str, Any]] = Field(default_factory=list)
    statements: list[ReviewStatement] = Field(default_factory=list)
    statements_recorded: bool = False
    # "gateway" (its records) or "database log" (the target's statement_log); None: none
    statements_from: str | None = None
    statements_note: str | None = None  # why there are none, or what they lack
    chain_ok: bool | None = None  # None: no statement records to verify
    chain_problem: str | None = None


class IncidentSource(_Wire):
    """The incident as the incident source (``[review] incidents``) knows it."""

    source: str
    id: str
    title: str
    status: str
    opened_at: datetime
    closed_at: datetime | None = None  # None: not resolved
    url: str | None = None


class IncidentReport(_Wire):
    """``GET /v1/incidents/{incident}/review``: the post-incident record of an incident."""

    incident: str
    generated_at: datetime
    opened_at: datetime  # the incident's first break-glass session
    closed_at: datetime | None = None  # its last review's close (None: a review is open)
    # when the incident source was asked: what it said, or why there is nothing
    incident_source: IncidentSource | None = None
    incident_source_note: str | None = None
    sessions: list[ReviewSession]
    flags: list[ReviewFlag]
    audit_chain_ok: bool = True  # the whole audit trail's hash chain verifies
    bulk_rows: int
    revoke_within_seconds: float
    # SHA-256 of this report as canonical JSON, without generated_at and hash (what a
    # closed review records: services/incident_review.py, report_hash)
    hash: str | None = None


class ReviewClose(_Wire):
    model_config = ConfigDict(extra="forbid", frozen=True)

    note: Text = Field(min_length=1, max_length=2000)


class SessionRenew(_Wire):
    """``POST /v1/sessions/{id}/renew`` body: the session should last until now + this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration_seconds: Seconds | None = None
    # Without it, a time earlier than the current expiry leaves the session as it is.
    shorten: bool = False


class SessionInfo(_Wire):
    """A session as listed: never carries the password."""

    id: str
    target: str
    role: str
    engine: str
    db_user: str
    state: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    reason: str | None = None
    rule: str | None = None
    kind: str = "session"
    incident: str | None = None
    drill: bool = False


class SessionRenewed(SessionInfo):
    """``POST /v1/sessions/{id}/renew``: the session after renewal. ``changed`` is False
    when the asked-for end was not later than the current one (and no ``shorten``)."""

    changed: bool = True
    previous_expires_at: datetime | None = None


class SessionGranted(SessionInfo):
    """``POST /v1/sessions`` 201: the session plus the password, returned exactly once."""

    host: str
    port: int
    database: str
    sslmode: str | None = None
    password: SecretStr
    # "gateway": host/port are the gateway's, the password is the session's gateway
    # secret (not the database user's), and ca_certificate (PEM) verifies the gateway.
    access: str = "direct"
    ca_certificate: str | None = None

    @field_serializer("password", when_used="json")
    def _reveal_on_the_wire(self, value: SecretStr) -> str:
        # The one place the password is serialised: the 201 response body. Everywhere else
        # (repr, logs, tracebacks) SecretStr keeps it masked.
        return value.get_secret_value()


class ErrorDetail(_Wire):
    code: str
    message: str
    hint: str | None = None


class ErrorBody(_Wire):
    error: ErrorDetail


class AuditEntry(_Wire):
    """``GET /v1/audit``: one record of the trail."""

    seq: int
    at: datetime
    event: str
    subject: str | None = None
    lease_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class InventoryAccount(_Wire):
    """``GET /v1/inventory``: one standing login account of a target. Names and roles are
    the database's, unfiltered: show them with text.printable."""

    target: str
    account: str
    status: str  # finding, allowed, provisioner
    risks: list[str]
    member_of: list[str]


class InventoryReport(_Wire):
    """``GET /v1/inventory``: every standing account of the targets asked for; a target
    that could not be read is in ``errors`` with why."""

    taken_at: datetime
    accounts: list[InventoryAccount]
    errors: dict[str, str] = Field(default_factory=dict)


class StatementEntry(_Wire):
    """``GET /v1/sessions/{id}/statements``: one statement the gateway saw. ``sql`` and
    ``params`` are what the client sent, unfiltered: show them with text.printable."""

    seq: int
    started: datetime
    duration: float  # seconds
    kind: str  # query, execute, copy, function
    sql: str
    params_policy: str  # none, redacted, full
    params: list[str | None] | None = None
    rows: int | None = None
    bytes_out: int
    bytes_in: int
    sqlstate: str | None = None
    status: str  # completed, not_run, interrupted, refused
    rule: str | None = None  # the guardrail that refused it
    connection: int
    gateway: str
    written_at: datetime
    # The block (records written together) this record is stored and hashed in: its first
    # and last seq, and its hashes in the session's chain.
    block: tuple[int, int]
    prev_hash: str
    hash: str


class StatementSeal(_Wire):
    """The session's count and head as sealed into the audit trail at its end."""

    at: datetime
    count: int
    head: str


class StatementVerification(_Wire):
    """The session's chain recomputed: ``first_bad`` names the first record that does not
    fit; ``after_seal`` counts records stored after the seal."""

    ok: bool
    records: int
    expected: int
    first_bad: int | None = None
    problem: str | None = None
    after_seal: int = 0


class StatementPage(_Wire):
    """A page of a session's statement records, oldest first; ``next_after``: pass it as
    ``?after=`` for the next page (null on the last)."""

    session_id: str
    entries: list[StatementEntry]
    next_after: int | None = None
    head: str | None = None  # the chain's newest hash (null: no record yet)
    count: int = 0
    verification: StatementVerification
    seal: StatementSeal | None = None
