"""An approval request keeps the tier it landed in (the rule's tier whose approvals it
needs), so approvers, webhooks and the audit trail see it, not only the decision's text.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: requests made before it have no tier recorded
    op.add_column("approval_requests", sa.Column("tier", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("approval_requests") as batch:
        batch.drop_column("tier")
