"""A lease and an approval request keep the email claim as it came (``claimed_email``),
verified or not, for the checks that only refuse (one person under two subjects); their
``email``, which people read as who, is now the verified one alone.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: rows made before it compare their ``email``, as they did
    op.add_column("leases", sa.Column("claimed_email", sa.String(255)))
    op.add_column("approval_requests", sa.Column("claimed_email", sa.String(255)))


def downgrade() -> None:
    for table in ("leases", "approval_requests"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("claimed_email")
