"""Checking and exporting the hash-chained audit trail.

Each record stores the hash of the previous one and its own hash over (previous hash,
time, event, subject, lease, detail). Editing a record breaks its own hash; deleting or
reordering records breaks the next record's link. (Removing the newest records leaves a
shorter, valid chain: compare the count with an earlier export to catch that.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from dbaccess.broker.store import GENESIS, Store, _record_hash, audit


@dataclass(frozen=True)
class RawRecord:
    seq: int
    at: datetime
    event: str
    subject: str | None
    lease_id: str | None
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class Verdict:
    records: int
    first_bad: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def raw_records(store: Store, since: datetime | None = None) -> Iterator[RawRecord]:
    query = sa.select(audit).order_by(audit.c.seq)
    if since is not None:
        query = query.where(audit.c.at >= since)
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            yield RawRecord(**row._mapping)


def verify(records: Iterable[RawRecord]) -> Verdict:
    """Walk the chain in storage order; name the first record that does not fit."""
    expected_prev = GENESIS
    count = 0
    for record in records:
        count += 1
        if record.prev_hash != expected_prev:
            return Verdict(
                count,
                record.seq,
                "does not link to the record before it "
                "(a record was deleted, inserted or reordered)",
            )
        recomputed = _record_hash(
            record.prev_hash,
            record.at,
            record.event,
            record.subject,
            record.lease_id,
            record.detail,
        )
        if recomputed != record.hash:
            return Verdict(
                count, record.seq, "its content does not match its hash (the record was edited)"
            )
        expected_prev = record.hash
    return Verdict(count)


def export_lines(records: Iterable[RawRecord]) -> Iterator[str]:
    """JSON lines for a SIEM: one object per record, detail expanded."""
    for r in records:
        yield json.dumps(
            {
                "seq": r.seq,
                "at": r.at.isoformat(),
                "event": r.event,
                "subject": r.subject,
                "lease_id": r.lease_id,
                "detail": json.loads(r.detail),
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            },
            sort_keys=True,
        )
