"""The store sink's own conversions (unit): a stored record is its field tuple's tail, a
batch a block per session, and a writer hands the sink the tuples without building
records."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from dbaccess.broker.store.statement_chain import RECORD_FIELDS
from dbaccess.gateway.records import (
    BatchingWriter,
    MemorySink,
    RecordFields,
    StatementRecord,
    from_fields,
    to_fields,
)
from dbaccess.gateway.store_sink import blocks


def test_a_stored_record_is_the_tail_of_its_field_tuple() -> None:
    # the store keeps fields[4:] as it is: the orders must agree, name for name
    names = [f.name for f in dataclasses.fields(StatementRecord)]
    assert names[:4] == ["lease_id", "person", "target", "role"]
    # the times as integer nanoseconds there
    stored = {"started": "started_ns", "duration": "duration_ns"}
    assert [stored.get(n, n) for n in names[4:]] == list(RECORD_FIELDS)


def fields(lease: str, n: int) -> RecordFields:
    sql = f"SELECT {n}" + "\x00" * (n == 1)  # a NUL in the first one
    return (lease, "alice", "demo", "readonly", "query", sql, "none", None,
            1_700_000_000_000_000_000 + n, 250_000_000, n, 10, 0, None, "completed", 1,
            "r" * 80)  # fmt: skip


def test_a_batch_becomes_a_block_per_session_in_order() -> None:
    made = blocks([fields("a", 1), fields("b", 2), fields("a", 3)])
    assert [(b.lease_id, len(b.records)) for b in made] == [("a", 2), ("b", 1)]
    first = made[0].records[0]
    assert first[1] == "SELECT 1\ufffd"  # no NUL reaches the store
    assert tuple(first) == ("query", "SELECT 1\ufffd", *fields("a", 1)[6:])
    assert made[0].records[1] == fields("a", 3)[4:]  # no NUL: the tuple's own tail


def test_interleaved_sessions_keep_their_order_and_the_blocks_their_first_records() -> None:
    # "b" sorts after "a", but its first record comes first: its block does too
    batch = [fields(lease, n) for n, lease in enumerate("bacabb", start=2)]
    made = blocks(batch)
    assert [b.lease_id for b in made] == ["b", "a", "c"]
    started = [[r[4] - 1_700_000_000_000_000_000 for r in b.records] for b in made]
    assert started == [[2, 6, 7], [3, 5], [4]]


class FieldsOnly:
    def __init__(self) -> None:
        self.got: list[RecordFields] = []

    def write(self, records: Sequence[StatementRecord]) -> None:
        raise AssertionError("a fields sink gets the tuples")

    def write_fields(self, batch: Sequence[RecordFields]) -> None:
        self.got.extend(batch)


def test_the_writer_hands_a_fields_sink_the_tuples() -> None:
    sink = FieldsOnly()
    writer = BatchingWriter(sink, max_delay=0.01)
    record = StatementRecord(
        "a", "alice", "demo", "readonly", "query", "SELECT 1", "none", None,
        datetime(2026, 12, 2, 12, 0, 0, 250000, tzinfo=UTC), 0.5, 1, 10, 0, None,
        "completed", 1,
    )  # fmt: skip
    writer.add_fields(fields("a", 1))
    writer.add(record)  # a record object: turned into its fields
    writer.add_fields(record)  # even by the method for tuples: a record, not a stuck batch
    assert writer.flush()
    writer.close()
    assert sink.got == [fields("a", 1), to_fields(record), to_fields(record)]


def test_a_closed_writer_refuses_a_record_without_keeping_it() -> None:
    writer = BatchingWriter(FieldsOnly(), max_delay=0.01)
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.add_fields(fields("a", 1))
    assert not writer.queue
    assert writer.flush(0.5)  # nothing waits for a writer that is gone


def test_record_times_survive_the_integer_form_to_the_microsecond() -> None:
    started = datetime(2026, 12, 2, 12, 0, 0, 123456, tzinfo=UTC)
    record = StatementRecord(
        "a", "alice", "demo", "readonly", "query", "SELECT 1", "none", None,
        started, 0.000375, 1, 10, 0, None, "completed", 1,
    )  # fmt: skip
    tail = to_fields(record)[8:10]
    assert tail == (1_796_212_800_123_456_000, 375_000)
    assert all(type(v) is int for v in tail)  # no float reaches the JSON
    again = from_fields(to_fields(record))
    assert (again.started, again.duration) == (started, 0.000375)


def test_sql_over_the_limit_is_capped_and_a_big_batch_split_into_blocks() -> None:
    from dbaccess.gateway import store_sink

    def sized(lease: str, n: int, size: int) -> RecordFields:
        record = fields(lease, n + 2)
        return (*record[:5], "x" * size, *record[6:])  # type: ignore[return-value]

    limit = store_sink.MAX_SQL_TEXT
    made = blocks([sized("a", 1, limit), sized("a", 2, limit + 1)])
    assert made[0].records[0][1] == "x" * limit  # at the limit: kept whole
    assert made[0].records[1][1].startswith("x" * limit + "\u2026 [truncated: 65537 characters")
    # a session's SQL in one batch goes into blocks of BLOCK_SQL_TEXT characters at most
    many = [sized("a", n, limit) for n in range(store_sink.BLOCK_SQL_TEXT // limit + 10)]
    split = blocks([*many, fields("b", 3)])
    assert [b.lease_id for b in split] == ["a", "a", "b"]
    assert [len(b.records) for b in split] == [store_sink.BLOCK_SQL_TEXT // limit, 10, 1]
    assert split[1].records[0] == many[store_sink.BLOCK_SQL_TEXT // limit][4:]


def test_a_record_no_sink_can_take_is_counted_lost_and_the_writer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a start that is no number cannot become a record: its batch is lost and said so,
    # and the writer neither dies nor hangs a flush
    sink = MemorySink()
    writer = BatchingWriter(sink, max_delay=0.01)
    try:
        writer.add_fields((*fields("a", 1)[:8], "not a time", *fields("a", 1)[9:]))  # type: ignore[arg-type]
        assert writer.flush(2)
        assert writer.lost == 1 and "could not be converted" in caplog.text
        writer.add_fields(fields("a", 2))
        assert writer.flush(2)
        assert [r.sql for r in sink.records] == ["SELECT 2"]
    finally:
        writer.close()
