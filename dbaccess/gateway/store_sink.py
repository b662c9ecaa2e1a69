"""The store as a ``RecordSink``: a gateway process hands it to its ``BatchingWriter``, and
each batch becomes one store transaction holding, per session, one block of records that
continues the session's hash chain (broker/store/statement_chain.py). A batch that fails
raises, and the writer retries it.

The writer hands over the protocol server's field tuples as they are (``write_fields``):
no record object, no datetime but the one ISO text per record the block keeps. This is
the whole per-statement cost of auditing, so it is kept to a loop over tuples."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from dbaccess.broker.store import Store
from dbaccess.broker.store.statement_chain import MAX_RULE, NewBlock, text
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


class _UtcText:
    """POSIX times as ISO text in UTC, always with microseconds (what datetime.isoformat
    writes, which the store's readers parse back). A fifth of a record's cost was
    ``fromtimestamp(...).isoformat()``; statements of one batch mostly start within the
    same second, whose text is kept."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, posix: float) -> str:
        # rounded as datetime.fromtimestamp rounds (the fraction, half to even)
        fraction, whole = math.modf(posix)
        micro = round(fraction * 1e6)
        second = int(whole)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        elif micro < 0:
            second, micro = second - 1, micro + 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micro:06d}+00:00"


def blocks(batch: Sequence[RecordFields]) -> list[NewBlock]:
    """A block per session, its records in the order given, in RECORD_FIELDS form."""
    by_lease: dict[str, tuple[tuple[str, str, str], list[list[Any]]]] = {}
    iso = _UtcText()
    for fields in batch:
        (lease, person, target, role, kind, sql, policy, params, started, duration,
         rows, bytes_out, bytes_in, sqlstate, status, connection, rule) = fields  # fmt: skip
        entry = by_lease.get(lease)
        if entry is None:
            entry = by_lease[lease] = ((person, target, role), [])
        entry[1].append(
            [kind, text(sql), policy, None if params is None else list(params),
             iso(started), float(duration), rows, bytes_out,
             bytes_in, sqlstate, status, None if rule is None else rule[:MAX_RULE],
             connection]
        )  # fmt: skip
    return [
        NewBlock(lease, person, target, role, records)
        for lease, ((person, target, role), records) in by_lease.items()
    ]
