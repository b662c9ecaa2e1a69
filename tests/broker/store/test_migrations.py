"""The migrations build exactly the schema the store's code declares: a table, column,
index or type added to one and not the other is caught here (Alembic's own comparison,
the one ``alembic revision --autogenerate`` uses)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dbaccess.broker.store import metadata, upgrade


def test_a_migrated_store_matches_the_declared_schema(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_the_comparison_sees_a_missing_column(tmp_path: Path) -> None:
    """The check above can fail: a column the code declares but no migration adds."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    declared = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(declared)
    sa.Table("leases", declared, sa.Column("not_migrated", sa.Text), extend_existing=True)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), declared)
    finally:
        engine.dispose()
    assert [(d[0], d[3].name) for d in differences if d[0] == "add_column"] == [
        ("add_column", "not_migrated")
    ]
