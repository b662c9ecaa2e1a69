"""A real client through the gateway with the store as its record sink: every statement the
server ran is a stored record, chained and verifying, SQL and parameters as sent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import psycopg
import pytest

from dbaccess.broker.store import Store
from dbaccess.gateway.store_sink import MAX_SQL_TEXT, StoreSink
from tests.gateway.conftest import RunningGateway, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, Store]]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('gateway-store') / 'broker.db'}")
    sink = StoreSink(store, "gw-test")
    try:
        # batches of 4: the test's statements make more records than one batch
        with running_gateway(tmp_path_factory, sink, name="gateway-store", max_batch=4) as gw:
            yield gw, store
    finally:
        store.close()


def test_every_statement_is_a_stored_verifying_record(
    stored: tuple[RunningGateway, Store],
) -> None:
    gateway, store = stored
    session = gateway.new_session()
    hostile = "SELECT 'x' /* \x1b[2J\x1b]0;owned\x07 */"
    with psycopg.connect(gateway.dsn(session), prepare_threshold=0) as conn:
        conn.execute("SELECT 1")
        for n in range(6):  # prepared, more records than one batch
            conn.execute("SELECT %s::text || 'x'", (f"v{n}",))
        conn.execute(hostile)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        conn.rollback()
        with conn.cursor().copy("COPY (SELECT generate_series(1, 50)) TO STDOUT") as copy:
            assert len(b"".join(bytes(chunk) for chunk in copy)) > 0
    assert gateway.writer.flush(10)

    lease = session.session.lease_id
    page, more = store.statement_page(lease, limit=1000)
    assert more is None
    # 0 unaudited: a record for each statement the server's log shows it ran (1/0 fails
    # while being planned, before the log's "execute" line: recorded, with its SQLSTATE)
    ran = [r for r in page if r.status != "not_run" and r.sqlstate is None]
    assert len(ran) == len(gateway.server_statements(session))
    assert [r.seq for r in page] == list(range(1, len(page) + 1))
    assert {r.gateway for r in page} == {"gw-test"}
    sqls = [r.sql for r in page]
    assert "SELECT 1" in sqls and hostile in sqls
    prepared = [r for r in page if r.sql == "SELECT $1::text || 'x'"]
    assert [r.param_values() for r in prepared] == [[f"v{n}"] for n in range(6)]
    [failed] = [r for r in page if r.sqlstate == "22012"]
    assert failed.sql == "SELECT 1/0"
    [copied] = [r for r in page if r.kind == "copy"]
    assert copied.rows == 50 and copied.bytes_out > 0
    assert all(r.subject == "alice@example.com" and r.target == "pg-test" for r in page)
    verdict = store.verify_statements(lease)
    assert verdict.ok and verdict.records == verdict.expected == len(page)


def test_a_huge_statement_runs_and_its_record_keeps_the_head_and_a_marker(
    stored: tuple[RunningGateway, Store],
) -> None:
    # a client's multi-MB INSERT ... VALUES: the record, its block's JSON and the store
    # would hold it whole; the writer keeps MAX_SQL_TEXT characters and says what was cut
    gateway, store = stored
    session = gateway.new_session()
    value = "é" + "x" * (3 * 1024 * 1024)
    insert = f"INSERT INTO big (v) VALUES ('{value}')"
    params = f"SELECT length(%s::text), '{value[:200_000]}' IS NOT NULL"
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE big (v text)")
        simple = psycopg.ClientCursor(conn)  # the simple protocol: one Query message
        simple.execute(insert)
        assert simple.rowcount == 1
        got = conn.execute(params, ("y" * 5000,)).fetchone()  # Parse/Bind, params = full
        assert got == (5000, True)
        assert conn.execute("SELECT length(v) FROM big").fetchone() == (len(value),)
    assert gateway.writer.flush(10)

    page, _ = store.statement_page(session.session.lease_id, limit=1000)
    by_start = {r.sql[:40]: r for r in page}
    for sent in (insert, params.replace("%s", "$1")):
        record = by_start[sent[:40]]
        assert record.status == "completed" and record.sqlstate is None
        digest = hashlib.sha256(sent.encode()).hexdigest()
        marker = f"\u2026 [truncated: {len(sent)} characters in all, sha256 {digest}]"
        assert record.sql == sent[:MAX_SQL_TEXT] + marker
    [bound] = [r for r in page if r.kind == "execute" and r.sql.startswith("SELECT length")]
    assert bound.param_values() == ["y" * 4096]  # a bind parameter: 4096 characters
    [small] = [r for r in page if r.sql == "SELECT length(v) FROM big"]  # short: whole
    assert small.rows == 1
    assert store.verify_statements(session.session.lease_id).ok
