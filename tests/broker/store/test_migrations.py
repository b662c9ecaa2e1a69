"""The migrations build exactly the schema the store's code declares: a table, column,
index or type added to one and not the other is caught here (Alembic's own comparison,
the one ``alembic revision --autogenerate`` uses)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dbaccess.broker.store import metadata, upgrade
from dbaccess.sandbox.stack import Stack


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


@pytest.mark.integration
def test_processes_opening_a_new_postgresql_store_at_once_migrate_it_once(
    stack: Stack,
) -> None:
    # replicas, gateways and the CLI all upgrade the store they open: started together on
    # a new store, none may fail on a table another one is creating
    pg = stack.postgres
    database = f"store_{uuid.uuid4().hex[:8]}"
    with pg.connect() as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:{pg.port}/{database}"
    code = (
        "import sys\n"
        "from dbaccess.broker.store import Store\n"
        "Store(sys.argv[1]).close()\n"
        "print('opened')\n"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [run.communicate(timeout=120) for run in runs]
    for run, (out, err) in zip(runs, results, strict=True):
        assert run.returncode == 0 and out.strip() == b"opened", err.decode()[-2000:]
    with pg.connect(database) as conn:
        versions = conn.execute("SELECT count(*) FROM alembic_version").fetchone()
    assert versions == (1,)
