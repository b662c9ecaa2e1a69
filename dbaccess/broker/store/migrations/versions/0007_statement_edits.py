"""A count of the changes made to stored statement blocks after they were written: the
gateway only inserts blocks, so an UPDATE, DELETE or TRUNCATE of ``statement_blocks`` is an
edit (or a repair), and triggers count it in the one row of ``statement_edits``. A reader
that verified a session's chain once may then check only its new blocks while the count
stands still, and paging through a long session costs one walk of the chain, not one a
page (store/statement_chain.py, ``page_verdict``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = ("statement_blocks_updated", "statement_blocks_deleted")
POSTGRES_TRIGGER = "statement_blocks_edited"


def upgrade() -> None:
    op.create_table(
        "statement_edits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO statement_edits (id, count) VALUES (1, 0)")
    if op.get_bind().dialect.name == "sqlite":
        for name, event in zip(SQLITE_TRIGGERS, ("UPDATE", "DELETE"), strict=True):
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON statement_blocks "
                "BEGIN UPDATE statement_edits SET count = count + 1; END"
            )
    else:
        op.execute(
            "CREATE FUNCTION statement_edits_count() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN UPDATE statement_edits SET count = count + 1; RETURN NULL; END $$"
        )
        # per statement: TRUNCATE has no rows, and a mass edit counts once
        op.execute(
            f"CREATE TRIGGER {POSTGRES_TRIGGER} AFTER UPDATE OR DELETE OR TRUNCATE "
            "ON statement_blocks FOR EACH STATEMENT EXECUTE PROCEDURE statement_edits_count()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    else:
        op.execute(f"DROP TRIGGER {POSTGRES_TRIGGER} ON statement_blocks")
        op.execute("DROP FUNCTION statement_edits_count()")
    op.drop_table("statement_edits")
