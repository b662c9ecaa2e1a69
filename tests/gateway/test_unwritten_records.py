"""A store that takes no records: the gateway does not run what it cannot record. Once more
than ``max_unwritten`` records wait, new statements are refused (SQLSTATE 53000, rule
records.unwritten) with the session left usable; when the store takes them again,
everything waiting is written, refusals included, and statements run again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import psycopg
import pytest

from dbaccess.gateway.records import BatchingWriter, MemorySink, StatementRecord
from tests.gateway.conftest import RunningGateway

pytestmark = pytest.mark.integration

LIMIT = 20


class StalledSink(MemorySink):
    """A store that fails every write while ``stalled`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = threading.Event()

    def write(self, records: Sequence[StatementRecord]) -> None:
        if self.stalled.is_set():
            raise OSError("the store is unreachable")
        super().write(records)


@pytest.fixture
def stalled(gateway: RunningGateway) -> Iterator[tuple[StalledSink, BatchingWriter]]:
    sink = StalledSink()
    writer = BatchingWriter(sink, max_delay=0.01, retry_delay=0.05, max_unwritten=LIMIT)
    usual = gateway.gateway.records
    gateway.gateway.records = writer  # the connections made from now on
    try:
        yield sink, writer
    finally:
        gateway.gateway.records = usual
        sink.stalled.clear()
        writer.close()


def test_statements_are_refused_while_records_cannot_be_written(
    gateway: RunningGateway, stalled: tuple[StalledSink, BatchingWriter]
) -> None:
    sink, writer = stalled
    session = gateway.new_session()
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert writer.flush(5)
        sink.stalled.set()
        ran = 0
        with pytest.raises(psycopg.errors.InsufficientResources) as refused:
            for n in range(LIMIT * 3):
                conn.execute(f"SELECT {n}")
                ran += 1
        assert LIMIT - 1 <= ran <= LIMIT + 1  # run while the waiting records fit
        assert "records.unwritten" in str(refused.value) and "nothing was run" in str(refused.value)
        # every kind of statement, simple or prepared, and the session stays usable
        with pytest.raises(psycopg.errors.InsufficientResources):
            conn.execute("SELECT %s::int", (7,), prepare=True)
        with pytest.raises(psycopg.errors.InsufficientResources):
            conn.execute("SELECT 'not run'")
        assert not writer.flush(0.3)  # nothing written meanwhile

        sink.stalled.clear()  # the store is back
        assert writer.flush(10)
        deadline = time.monotonic() + 5
        while writer.backlogged:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert conn.execute("SELECT 'runs again'").fetchone() == ("runs again",)
        assert conn.execute("SELECT %s::int", (8,), prepare=True).fetchone() == (8,)
    assert writer.flush(10)
    records = sink.for_lease(session.session.lease_id)
    refusals = [r for r in records if r.rule == "records.unwritten"]
    assert len(refusals) == 3 and {r.sqlstate for r in refusals} == {"53000"}
    assert {r.status for r in refusals} == {"refused"}
    # no record lost, and none of a statement the server did not run but the refusals
    ran_records = [r for r in records if r.status != "refused"]
    logged = gateway.server_statements(session)
    assert len(ran_records) == len(logged) == ran + 3  # SELECT 1, runs again, 8
    assert not any("not run" in line for line in logged)


def test_the_batch_a_failing_store_holds_counts_as_unwritten() -> None:
    """The writer keeps retrying the batch it took: those records are not written either,
    so they count towards the limit as much as the ones still queued."""
    sink = StalledSink()
    sink.stalled.set()
    writer = BatchingWriter(sink, max_delay=0.01, retry_delay=0.05, max_unwritten=10)
    try:
        for n in range(6):
            writer.add_fields(fields(n))
        time.sleep(0.2)  # the writer has taken them into the batch it retries
        assert not writer.backlogged
        for n in range(5):
            writer.add_fields(fields(6 + n))
        assert writer.backlogged  # 11 unwritten, though only 5 are queued
        sink.stalled.clear()
        assert writer.flush(5)
        assert not writer.backlogged
        assert [r.sql for r in sink.records] == [f"SELECT {n}" for n in range(11)]
    finally:
        writer.close()


def fields(n: int) -> tuple[object, ...]:
    return ("lease", "alice", "demo", "readonly", "query", f"SELECT {n}", "none", None,
            1_700_000_000_000_000_000, 1000, 1, 10, 0, None, "completed", 1, None)  # fmt: skip


def test_refusals_past_twice_the_limit_are_counted_not_recorded(
    gateway: RunningGateway, stalled: tuple[StalledSink, BatchingWriter]
) -> None:
    # each refusal would be a record of its own, growing the backlog it answers as fast
    # as a client can pipeline statements: past twice the limit they are only counted
    sink, writer = stalled
    session = gateway.new_session()
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        sink.stalled.set()
        for n in range(LIMIT * 6):
            try:
                conn.execute(f"SELECT {n}")
            except psycopg.errors.InsufficientResources:
                pass
        assert writer.unrecorded_refusals >= LIMIT * 6 - 2 * LIMIT - 2
        sink.stalled.clear()
        assert writer.flush(10)
        deadline = time.monotonic() + 5
        while writer.backlogged:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert writer.unrecorded_refusals == 0  # said in the recovery's log line, then reset
    records = sink.for_lease(session.session.lease_id)
    assert len(records) <= 2 * LIMIT + 1  # bounded, whatever the client sent
    ran = [r for r in records if r.status != "refused"]
    assert len(ran) == len(gateway.server_statements(session))  # every statement run is there
