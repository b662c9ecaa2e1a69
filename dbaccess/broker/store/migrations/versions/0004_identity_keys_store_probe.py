"""The identity provider's last good key set, and the row /healthz writes to prove the
store takes writes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dbaccess.broker.store.migrations.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_keys",
        sa.Column("issuer", sa.String(500), primary_key=True),
        sa.Column("jwks_uri", sa.String(500), nullable=False),
        sa.Column("jwks", sa.Text, nullable=False),
        sa.Column("fetched_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "store_probe",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("store_probe")
    op.drop_table("identity_keys")
