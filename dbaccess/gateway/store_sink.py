"""The store as a ``RecordSink``: a gateway process hands it to its ``BatchingWriter``, and
each batch becomes one store transaction holding, per session, one block of records that
continues the session's hash chain (broker/store/statement_chain.py). A batch that fails
raises, and the writer retries it.

The writer hands over the protocol server's field tuples as they are (``write_fields``),
and a stored record is the tail of its tuple: no record object, no datetime, no copy. This
is the whole per-statement cost of auditing (with the block's JSON encoding), so it is kept
to a loop over tuples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from dbaccess.broker.store import Store
from dbaccess.broker.store.statement_chain import NewBlock, text
from dbaccess.gateway.records import RecordFields, StatementRecord, to_fields

MAX_GATEWAY_NAME = 64  # statement_blocks.gateway


class StoreSink:
    """Writes statement records to the store, marked with ``gateway_name`` (which gateway
    process saw them)."""

    def __init__(
        self,
        store: Store,
        gateway_name: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not gateway_name or len(gateway_name) > MAX_GATEWAY_NAME:
            raise ValueError(f"a gateway's name has 1 to {MAX_GATEWAY_NAME} characters")
        self._store = store
        self.gateway_name = gateway_name
        self._clock = clock

    def write(self, records: Sequence[StatementRecord]) -> None:
        self.write_fields([to_fields(r) for r in records])

    def write_fields(self, batch: Sequence[RecordFields]) -> None:
        self._store.append_blocks(blocks(batch), self.gateway_name, self._clock())


def blocks(batch: Sequence[RecordFields]) -> list[NewBlock]:
    """A block per session, its records in the order given: each the tail of its field
    tuple (RECORD_FIELDS follows that order), rebuilt only for a NUL in its SQL."""
    by_lease: dict[str, tuple[tuple[str, str, str], list[Sequence[Any]]]] = {}
    for fields in batch:
        entry = by_lease.get(fields[0])
        if entry is None:
            entry = by_lease[fields[0]] = ((fields[1], fields[2], fields[3]), [])
        record = fields[4:]
        if "\x00" in record[1]:
            record = (record[0], text(record[1]), *record[2:])
        entry[1].append(record)
    return [
        NewBlock(lease, person, target, role, records)
        for lease, ((person, target, role), records) in by_lease.items()
    ]
