"""Tables of the broker's state (SQLAlchemy Core; Alembic's ``target_metadata``) and
the one column type they share."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

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
    # "gateway" when clients reach the target through the gateway (NULL: direct); then the
    # SCRAM verifier of the session's gateway secret (the secret itself is never kept).
    sa.Column("access", sa.String(16)),
    sa.Column("gateway_verifier", sa.String(200)),
    # the email claim, verified or not: only for checks that refuse (one person, two
    # subjects); never shown as who (``email`` is the verified one) (migration 0009)
    sa.Column("claimed_email", sa.String(255)),
    # The revocation claim reads live leases by state and expiry.
    sa.Index("ix_leases_state_expires_at", "state", "expires_at"),
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
    sa.Column("tier", sa.String(64)),  # the rule's tier the request landed in (migration 0008)
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
    # the email claim, verified or not: only for checks that refuse (one person, two
    # subjects); never shown as who (``email`` is the verified one) (migration 0009)
    sa.Column("claimed_email", sa.String(255)),
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


# Statement records of gateway sessions, one per statement (dbaccess/gateway/records.py),
# each carrying the hash of the session's previous one; ``statement_heads`` holds each
# session's last hash, and the seal that copied it into the main audit at session end.
# A gateway's statement records, a block per session per batch written (migration 0006):
# ``records`` is a JSON array of the records first_seq..last_seq, each an array of
# statement_chain.RECORD_FIELDS; the hash covers the block as stored.
statement_blocks = sa.Table(
    "statement_blocks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lease_id", sa.String(36), nullable=False),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("subject", sa.String(255), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("gateway", sa.String(64), nullable=False),
    sa.Column("written_at", UTCDateTime, nullable=False),
    sa.Column("records", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.UniqueConstraint("lease_id", "first_seq", name="uq_statement_blocks_lease_seq"),
)

statement_heads = sa.Table(
    "statement_heads",
    metadata,
    sa.Column("lease_id", sa.String(36), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("head", sa.String(64), nullable=False),
    sa.Column("sealed_at", UTCDateTime),
    sa.Column("sealed_count", sa.Integer),
    sa.Column("sealed_head", sa.String(64)),
)

# One row counting UPDATEs, DELETEs and TRUNCATEs of statement_blocks, kept by triggers
# (migration 0007): blocks are only ever inserted, so a change of the count means an edit,
# and a session's verified chain must be walked again (statement_chain.page_verdict).
statement_edits = sa.Table(
    "statement_edits",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("count", sa.BigInteger, nullable=False),
)


LIVE_STATES = ("creating", "active", "revoking")
