"""The gateway: a lease's access path and gateway verifier, the statement records with
their per-session hash chain, and the index the revocation claim reads by.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dbaccess.broker.store.migrations.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("access", sa.String(16)))
        batch.add_column(sa.Column("gateway_verifier", sa.String(200)))
    op.create_index("ix_leases_state_expires_at", "leases", ["state", "expires_at"])
    op.create_table(
        "statements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("lease_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sql", sa.Text, nullable=False),
        sa.Column("params_policy", sa.String(16), nullable=False),
        sa.Column("params", sa.Text),
        sa.Column("started", UTCDateTime, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("rows", sa.BigInteger),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("sqlstate", sa.String(5)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64)),
        sa.Column("connection", sa.Integer, nullable=False),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("written_at", UTCDateTime, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("lease_id", "seq", name="uq_statements_lease_seq"),
    )
    op.create_table(
        "statement_heads",
        sa.Column("lease_id", sa.String(36), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("sealed_at", UTCDateTime),
        sa.Column("sealed_count", sa.Integer),
        sa.Column("sealed_head", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("statement_heads")
    op.drop_table("statements")
    op.drop_index("ix_leases_state_expires_at", "leases")
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("gateway_verifier")
        batch.drop_column("access")
