"""Statement records stored in blocks: one row per session per batch the gateway writes,
its records a JSON array, the chain linking blocks (store/statement_chain.py). A row per
record cost the gateway ~70 us per statement (bench/gateway.py --store); a block costs a
few. The per-record table of 0005 held only what unreleased gateways wrote, and goes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dbaccess.broker.store.migrations.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("statements")
    op.create_table(
        "statement_blocks",
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


def downgrade() -> None:
    op.drop_table("statement_blocks")
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
