"""The store sink's own conversions (unit): the times it writes read back as the times the
gateway measured, and a writer hands it the field tuples without building records."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime

from dbaccess.gateway.records import BatchingWriter, RecordFields, StatementRecord, to_fields
from dbaccess.gateway.store_sink import _UtcText, blocks


def test_times_read_back_as_datetime_would_make_them() -> None:
    iso = _UtcText()
    rng = random.Random(14)
    samples = [rng.uniform(0, 4e9) for _ in range(20_000)]
    samples += [1.7e9 + rng.random() * 3 for _ in range(20_000)]  # many in one second
    samples += [1_700_000_000.0, 1_700_000_000.9999996, 1_700_000_000.0000004, 0.5]
    for posix in samples:
        text = iso(posix)
        assert datetime.fromisoformat(text) == datetime.fromtimestamp(posix, UTC), posix
        assert text.endswith("+00:00") and len(text) == 32


def fields(lease: str, n: int) -> RecordFields:
    return (lease, "alice", "demo", "readonly", "query", f"SELECT {n}\x00", "none", None,
            1.7e9 + n, 0.25, n, 10, 0, None, "completed", 1, "r" * 80)  # fmt: skip


def test_a_batch_becomes_a_block_per_session_in_order() -> None:
    made = blocks([fields("a", 1), fields("b", 2), fields("a", 3)])
    assert [(b.lease_id, len(b.records)) for b in made] == [("a", 2), ("b", 1)]
    first = made[0].records[0]
    assert first[1] == "SELECT 1\ufffd"  # no NUL reaches the store
    assert first[4] == "2023-11-14T22:13:21.000000+00:00" and first[11] == "r" * 64


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
    assert writer.flush()
    writer.close()
    assert sink.got == [fields("a", 1), to_fields(record)]
