"""The store as a ``RecordSink``: a gateway process hands it to its ``BatchingWriter``, and
each batch becomes one store transaction holding, per session, one block of records that
continues the session's hash chain (broker/store/statement_chain.py). A batch that fails
raises, and the writer retries it.

The writer hands over the protocol server's field tuples as they are (``write_fields``),
and a stored record is the tail of its tuple: no record object, no datetime, no copy. This
is the whole per-statement cost of auditing (with the block's JSON encoding), so it is kept
to a loop over tuples."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import groupby, repeat
from operator import contains, itemgetter
from typing import Any

from dbaccess.broker.store import Store
from dbaccess.broker.store.statement_chain import NewBlock, text
from dbaccess.gateway.records import RecordFields, StatementRecord, to_fields

MAX_GATEWAY_NAME = 64  # statement_blocks.gateway
# Characters of a statement's SQL a record keeps ([gateway] max_sql_text): a client may send
# a 200 MB INSERT ... VALUES, which the record, its block's JSON and a PostgreSQL store's
# text (1 GB at most) would otherwise hold whole, and a batch the store refuses is retried
# forever, holding back every later record of the gateway.
MAX_SQL_TEXT = 64 * 1024
# A session's records in one batch go into blocks of about this many characters of SQL
# at most: JSON writes a control character in 6 bytes, and 2,000 records of 64 Ki such
# characters in one block would come near PostgreSQL's limit for one value.
BLOCK_SQL_TEXT = 16 * 1024 * 1024
# what the batch's C loops take of each field tuple: its lease, its SQL, its tail (the
# record a block keeps); of a session's entry, its first index; of a kept record, its SQL
_LEASE, _SQL, _TAIL = itemgetter(0), itemgetter(5), itemgetter(slice(4, None))
_FIRST, _KEPT_SQL = itemgetter(0), itemgetter(1)


class StoreSink:
    """Writes statement records to the store, marked with ``gateway_name`` (which gateway
    process saw them)."""

    def __init__(
        self,
        store: Store,
        gateway_name: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_sql_text: int = MAX_SQL_TEXT,
    ) -> None:
        if not gateway_name or len(gateway_name) > MAX_GATEWAY_NAME:
            raise ValueError(f"a gateway's name has 1 to {MAX_GATEWAY_NAME} characters")
        self._store = store
        self.gateway_name = gateway_name
        self._clock = clock
        self.max_sql_text = max_sql_text

    def write(self, records: Sequence[StatementRecord]) -> None:
        self.write_fields([to_fields(r) for r in records])

    def write_fields(self, batch: Sequence[RecordFields]) -> None:
        self._store.append_blocks(
            blocks(batch, self.max_sql_text), self.gateway_name, self._clock()
        )


def capped_sql(sql: str, limit: int) -> str:
    """The head of ``sql`` (``limit`` characters) and a marker saying how long the whole
    text was and its SHA-256 (of its UTF-8), so the statement stays identifiable: the
    client's text, a server's log or pg_stat_statements can be matched against it."""
    digest = hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{sql[:limit]}\u2026 [truncated: {len(sql)} characters in all, sha256 {digest}]"


def stored_sql(sql: str, max_sql_text: int) -> str:
    """``sql`` as a record keeps it: capped, and without NUL (statement_chain.text)."""
    if len(sql) > max_sql_text:
        sql = capped_sql(sql, max_sql_text)
    return text(sql) if "\x00" in sql else sql


def blocks(batch: Sequence[RecordFields], max_sql_text: int = MAX_SQL_TEXT) -> list[NewBlock]:
    """A block per session, its records in the order given, the blocks in the order of each
    session's first record: each record the tail of its field tuple (RECORD_FIELDS follows
    that order), rebuilt only for SQL over ``max_sql_text`` characters (capped_sql) or
    holding a NUL. Here, in the writer's thread, not on the event loop: the protocol server
    only decodes the text. A session's SQL over BLOCK_SQL_TEXT characters in a batch
    continues in another block. Each step over the records is a C loop (map, count, sorted,
    groupby): this runs once per statement through the gateway, and the Python loop it
    replaced cost twice as much (bench/gateway.py's batches of one session: 0.13 us a record
    against 0.22-0.27)."""
    if not batch:
        return []
    records: list[Sequence[Any]] = list(map(_TAIL, batch))
    sqls = list(map(_SQL, batch))
    if max(map(len, sqls)) > max_sql_text or any(map(contains, sqls, repeat("\x00"))):
        records = [
            (r[0], stored_sql(r[1], max_sql_text), *r[2:])
            if len(r[1]) > max_sql_text or "\x00" in r[1]
            else r
            for r in records
        ]
        sqls = list(map(_KEPT_SQL, records))
    # the whole batch's SQL bounds each session's: under BLOCK_SQL_TEXT, nothing is split
    split = sum(map(len, sqls)) > BLOCK_SQL_TEXT
    leases = list(map(_LEASE, batch))
    if leases.count(leases[0]) == len(leases):
        sessions = [(0, leases[0], batch[0], records)]
    else:
        # stable: a session's records keep their order
        by_lease = sorted(range(len(batch)), key=leases.__getitem__)
        sessions = []
        for lease, group in groupby(by_lease, key=leases.__getitem__):
            indices = list(group)
            first = indices[0]
            sessions.append((first, lease, batch[first], list(map(records.__getitem__, indices))))
        sessions.sort(key=_FIRST)
    made = []
    for _, lease, (_, person, target, role, *_), kept in sessions:
        start = size = 0
        if split:
            for index, record in enumerate(kept):
                if size + len(record[1]) > BLOCK_SQL_TEXT and index > start:
                    made.append(NewBlock(lease, person, target, role, kept[start:index]))
                    start, size = index, 0
                size += len(record[1])
        made.append(NewBlock(lease, person, target, role, kept[start:] if start else kept))
    return made
