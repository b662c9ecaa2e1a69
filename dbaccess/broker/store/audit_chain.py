"""The hash-chained audit trail, all of it: appending records (in the transaction of the
change they describe), reading them, checking the chain and exporting it.

Each record stores the hash of the previous one and its own hash over (previous hash,
time, event, subject, lease, detail). Editing a record breaks its own hash; deleting or
reordering records breaks the next record's link. (Removing the newest records leaves a
shorter, valid chain: compare the count with an earlier export to catch that.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.database import Database
from dbaccess.broker.store.driver_sql import driver_cursor
from dbaccess.broker.store.rows import AuditRecord
from dbaccess.broker.store.schema import audit
from dbaccess.timestamps import json_default

GENESIS = "0" * 64  # the "previous hash" of the first audit record


def record_hash(
    prev_hash: str, at: datetime, event: str, subject: str | None, lease_id: str | None, detail: str
) -> str:
    body = json.dumps(
        [prev_hash, at.isoformat(), event, subject, lease_id, detail], separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()


def block_hash(
    prev_hash: str,
    lease_id: str,
    first_seq: int,
    last_seq: int,
    subject: str,
    target: str,
    role: str,
    gateway: str,
    written_at: str,
    records: str,
) -> str:
    """A block of statement records' hash (store/statement_chain.py): over the session's
    previous hash, the block's place and owner, and its records' JSON text as stored, so
    editing any record, or moving a block to another seq or session, breaks it. The text
    follows the header's compact JSON line as it is (escaping it again would cost more
    than the encoding that made it); the header, ASCII JSON, cannot hold a newline."""
    header = json.dumps(
        [prev_hash, lease_id, first_seq, last_seq, subject, target, role, gateway, written_at],
        separators=(",", ":"),
    )
    return hashlib.sha256(f"{header}\n{records}".encode()).hexdigest()


class AuditTrail(Database):
    """The audit trail's appends and reads."""

    def _append_audit(
        self,
        conn: Connection,
        now: datetime,
        event: str,
        subject: str | None,
        lease_id: str | None,
        detail: dict[str, Any],
    ) -> None:
        cursor = driver_cursor(conn)
        cursor.execute(self._sql.last_hash)
        last = cursor.fetchone()
        prev = last[0] if last else GENESIS
        text = json.dumps(detail, sort_keys=True, default=json_default)
        cursor.execute(
            self._sql.audit_insert,
            {
                "at": self._sql.time(now),
                "event": event,
                "subject": subject,
                "lease_id": lease_id,
                "detail": text,
                "prev_hash": prev,
                "hash": record_hash(prev, now, event, subject, lease_id, text),
            },
        )

    def _append_audits(
        self,
        conn: Connection,
        now: datetime,
        records: list[tuple[str, str | None, str | None, dict[str, Any]]],
    ) -> None:
        """``_append_audit`` for many records: the chain's last hash is read once and the
        rows go in with one executemany."""
        if not records:
            return
        cursor = driver_cursor(conn)
        cursor.execute(self._sql.last_hash)
        last = cursor.fetchone()
        prev = last[0] if last else GENESIS
        at = self._sql.time(now)
        rows = []
        for event, subject, lease_id, detail in records:
            text = json.dumps(detail, sort_keys=True, default=json_default)
            digest = record_hash(prev, now, event, subject, lease_id, text)
            rows.append(
                {
                    "at": at,
                    "event": event,
                    "subject": subject,
                    "lease_id": lease_id,
                    "detail": text,
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            prev = digest
        cursor.executemany(self._sql.audit_insert, rows)

    def record(
        self,
        now: datetime,
        event: str,
        subject: str | None,
        detail: dict[str, Any],
        lease_id: str | None = None,
    ) -> None:
        """An audit record that changes no lease (e.g. a denial)."""
        with self._write() as conn:
            self._append_audit(conn, now, event, subject, lease_id, detail)

    def audit_records(
        self,
        lease_id: str | None = None,
        *,
        since: datetime | None = None,
        subject: str | None = None,
        subjects: Iterable[str] | None = None,
        event: str | None = None,
        limit: int | None = None,
    ) -> list[AuditRecord]:
        query = sa.select(audit).order_by(audit.c.seq)
        if lease_id is not None:
            query = query.where(audit.c.lease_id == lease_id)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if subject is not None:
            query = query.where(audit.c.subject == subject)
        if subjects is not None:
            query = query.where(audit.c.subject.in_(sorted(subjects)))
        if event is not None:
            query = query.where(audit.c.event == event)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [AuditRecord(**{**row._mapping, "detail": json.loads(row.detail)}) for row in rows]

    def audit_page(
        self,
        *,
        limit: int,
        before: int | None = None,
        since: datetime | None = None,
        subjects: Iterable[str] | None = None,
        event: str | None = None,
        target: str | None = None,
    ) -> tuple[list[AuditRecord], int | None]:
        """The newest ``limit`` records older than seq ``before`` that pass every filter,
        newest first, and the seq to continue before (None: nothing older matches). Every
        filter is in the query, before the LIMIT: a filter applied to a page afterwards
        would show too few records, or none, while older ones match."""
        query = sa.select(audit).order_by(audit.c.seq.desc()).limit(limit + 1)
        if before is not None:
            query = query.where(audit.c.seq < before)
        if since is not None:
            query = query.where(audit.c.at >= since)
        if subjects is not None:
            query = query.where(audit.c.subject.in_(sorted(subjects)))
        if event is not None:
            query = query.where(audit.c.event == event)
        if target is not None:
            query = query.where(self._detail_text("target") == target)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        records = [
            AuditRecord(**{**row._mapping, "detail": json.loads(row.detail)})
            for row in rows[:limit]
        ]
        more = len(rows) > limit and bool(records)
        return records, (records[-1].seq if more else None)

    def _detail_text(self, key: str) -> Any:
        """The text of ``detail``'s top-level ``key`` (SQL NULL when absent), in SQL."""
        if self.dialect == "postgresql":
            return sa.func.json_extract_path_text(sa.cast(audit.c.detail, sa.JSON), key)
        return sa.func.json_extract(audit.c.detail, f"$.{key}")


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


def raw_records(store: Database, since: datetime | None = None) -> Iterator[RawRecord]:
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
        recomputed = record_hash(
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
    """JSON lines for a SIEM: one object per record, detail expanded ("type": "audit";
    the statement records that follow in an export are "type": "statement")."""
    for r in records:
        yield json.dumps(
            {
                "type": "audit",
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
