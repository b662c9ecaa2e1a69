"""Break-glass sessions, their reviews, and approval requests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dbaccess.broker.store.migrations.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="session"))
        batch.add_column(sa.Column("incident", sa.String(100)))
        batch.add_column(sa.Column("drill", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("request_id", sa.String(36)))
        batch.add_column(sa.Column("user_agent", sa.String(255)))
        batch.add_column(sa.Column("review_state", sa.String(16)))
        batch.add_column(sa.Column("reviewed_by", sa.String(255)))
        batch.add_column(sa.Column("reviewed_at", UTCDateTime))
        batch.add_column(sa.Column("review_note", sa.String(2000)))
    op.create_index("ix_leases_review_state", "leases", ["review_state"])
    op.create_table(
        "approval_requests",
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
        sa.Column("approver_groups", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("approvals", sa.Text, nullable=False, server_default="[]"),
        sa.Column("denied_by", sa.String(255)),
        sa.Column("deny_reason", sa.String(500)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
        sa.Column("decided_at", UTCDateTime),
        sa.Column("lease_id", sa.String(36)),
    )


def downgrade() -> None:
    op.drop_table("approval_requests")
    op.drop_index("ix_leases_review_state", "leases")
    with op.batch_alter_table("leases") as batch:
        for column in (
            "review_note",
            "reviewed_at",
            "reviewed_by",
            "review_state",
            "user_agent",
            "request_id",
            "drill",
            "incident",
            "kind",
        ):
            batch.drop_column(column)
