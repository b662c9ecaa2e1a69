"""Statement records of gateway sessions: appended in batches, chained per session, read a
page at a time, verified, and sealed into the main audit trail when the session has ended.

Each record stores the hash of its session's previous record (the first one: GENESIS) and
its own hash over that and every stored field (audit_chain.statement_hash). The session's
last hash and record count are kept in ``statement_heads``, so deleting the newest records
is caught too. When the session has ended (plus a grace period, so the gateway's last batch
lands first), ``seal_statements`` copies count and head into the audit trail
(``session.statements_sealed``), whose own chain then vouches for them. A record that
arrives after the seal is still stored (nothing is lost) and reported as after the seal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.audit_chain import GENESIS, AuditTrail, statement_hash
from dbaccess.broker.store.database import chunks
from dbaccess.broker.store.driver_sql import driver_cursor
from dbaccess.broker.store.schema import LIVE_STATES, audit, leases, statement_heads, statements

SEALED_EVENT = "session.statements_sealed"
SEAL_GRACE = 10.0  # seconds after the revocation before a session's records are sealed
SEAL_BATCH = 500  # sessions sealed per transaction

# The stored fields a record's hash covers, in the table's order (all but id and hash;
# prev_hash is hashed first, on its own).
HASHED = tuple(c for c in statements.columns.keys() if c not in ("id", "prev_hash", "hash"))


@dataclass(frozen=True)
class NewStatement:
    """A statement record as a gateway hands it over (gateway/store_sink.py maps the
    gateway's StatementRecord to this); the store adds seq, gateway, time and hashes."""

    lease_id: str
    subject: str
    target: str
    role: str
    kind: str
    sql: str
    params_policy: str
    params: Sequence[str | None] | None
    started: datetime
    duration: float
    rows: int | None
    bytes_out: int
    bytes_in: int
    sqlstate: str | None
    status: str
    connection: int
    rule: str | None = None


@dataclass(frozen=True)
class StoredStatement:
    lease_id: str
    seq: int
    subject: str
    target: str
    role: str
    kind: str
    sql: str
    params_policy: str
    params: str | None  # JSON text, as stored (and hashed)
    started: datetime
    duration: float
    rows: int | None
    bytes_out: int
    bytes_in: int
    sqlstate: str | None
    status: str
    rule: str | None
    connection: int
    gateway: str
    written_at: datetime
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HASHED}

    def param_values(self) -> list[str | None] | None:
        return None if self.params is None else list(json.loads(self.params))


@dataclass(frozen=True)
class StatementHead:
    lease_id: str
    count: int
    head: str
    sealed_at: datetime | None
    sealed_count: int | None
    sealed_head: str | None


@dataclass(frozen=True)
class StatementVerdict:
    """What ``verify_statements`` found for one session. ``first_bad`` is the seq of the
    first record that does not fit (for deleted newest records: the seq after the last one
    left); ``after_seal`` counts records stored after the seal."""

    lease_id: str
    records: int  # rows found
    expected: int  # the count the head says
    first_bad: int | None = None
    problem: str | None = None
    sealed_at: datetime | None = None
    sealed_count: int | None = None
    sealed_head: str | None = None
    after_seal: int = 0

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def _stored(row: Any) -> StoredStatement:
    values = dict(row._mapping)
    values.pop("id", None)
    return StoredStatement(**values)


def check_chain(
    lease_id: str,
    rows: Iterable[StoredStatement],
    head: StatementHead | None,
    sealed_event: dict[str, Any] | None = None,
) -> StatementVerdict:
    """Walk one session's records in seq order against its head and its seal."""
    expected_prev, expected_seq, found = GENESIS, 1, 0
    first_bad: int | None = None
    problem: str | None = None
    hash_at: dict[int, str] = {}
    sealed_count = head.sealed_count if head is not None else None
    for record in rows:
        found += 1
        if first_bad is None:
            if record.seq != expected_seq:
                first_bad, problem = (
                    expected_seq,
                    (f"record {expected_seq} is missing (deleted, or its seq was changed)"),
                )
            elif record.prev_hash != expected_prev:
                first_bad, problem = (
                    record.seq,
                    (
                        "does not link to the record before it (a record was deleted, inserted "
                        "or reordered)"
                    ),
                )
            elif statement_hash(record.prev_hash, record.fields()) != record.hash:
                first_bad, problem = (
                    record.seq,
                    ("its content does not match its hash (the record was edited)"),
                )
        if sealed_count is not None and record.seq == sealed_count:
            hash_at[record.seq] = record.hash
        expected_prev, expected_seq = record.hash, record.seq + 1
    count = head.count if head is not None else 0
    last = expected_seq - 1
    if first_bad is None and head is None and sealed_event is not None:
        first_bad, problem = (
            1,
            (
                f"the audit trail sealed {sealed_event.get('count')} record(s) but the "
                "session's head is gone (its records were deleted)"
            ),
        )
    elif first_bad is None and head is None and found:
        first_bad, problem = 1, "the session's records have no head (it was deleted)"
    elif first_bad is None and last < count:
        first_bad, problem = (
            last + 1,
            (
                f"the head counts {count} record(s) but the chain ends at {last} "
                "(the newest records were deleted)"
            ),
        )
    elif first_bad is None and head is not None and last > count:
        first_bad, problem = (
            count + 1,
            (f"record(s) after {count}, the head's count (inserted without the head)"),
        )
    elif first_bad is None and head is not None and found and expected_prev != head.head:
        first_bad, problem = last, "the last record's hash is not the head (it was edited)"
    if first_bad is None and head is not None and head.sealed_count is not None:
        sealed_hash = GENESIS if head.sealed_count == 0 else hash_at.get(head.sealed_count)
        seal = sealed_event or {}
        if sealed_hash != head.sealed_head or (
            sealed_event is not None
            and (seal.get("count"), seal.get("head")) != (head.sealed_count, head.sealed_head)
        ):
            first_bad = min(head.sealed_count, last) or 1
            problem = "the records do not match the seal in the audit trail"
        elif sealed_event is None:
            first_bad, problem = 1, "the seal's audit record is missing"
    after = 0
    if head is not None and head.sealed_count is not None:
        after = max(0, last - head.sealed_count)
    return StatementVerdict(
        lease_id=lease_id,
        records=found,
        expected=count,
        first_bad=first_bad,
        problem=problem,
        sealed_at=head.sealed_at if head else None,
        sealed_count=sealed_count,
        sealed_head=head.sealed_head if head else None,
        after_seal=after,
    )


class Statements(AuditTrail):
    """The gateway's statement records."""

    def append_statements(
        self, records: Sequence[NewStatement], gateway: str, now: datetime
    ) -> None:
        """Store a batch in one transaction, each session's records continuing its chain
        in the order given."""
        if not records:
            return
        by_lease: dict[str, list[NewStatement]] = {}
        for record in records:
            by_lease.setdefault(record.lease_id, []).append(record)
        written_at = now.astimezone(UTC)
        with self._write() as conn:
            heads = self._heads(conn, list(by_lease))
            rows: list[dict[str, Any]] = []
            for lease_id, batch in by_lease.items():
                head = heads.get(lease_id)
                count, prev = (head.count, head.head) if head else (0, GENESIS)
                for record in batch:
                    count += 1
                    fields = _fields(record, count, gateway, written_at)
                    digest = statement_hash(prev, fields)
                    rows.append({**fields, "prev_hash": prev, "hash": digest})
                    prev = digest
                if head is None:
                    conn.execute(
                        statement_heads.insert().values(lease_id=lease_id, count=count, head=prev)
                    )
                else:
                    conn.execute(
                        statement_heads.update()
                        .where(statement_heads.c.lease_id == lease_id)
                        .values(count=count, head=prev)
                    )
            # On the driver's cursor, as the audit trail's appends: SQLAlchemy's
            # executemany costs more than the rows themselves (times in the store's form).
            time, stored_at = self._sql.time, self._sql.time(written_at)
            cursor = driver_cursor(conn)
            cursor.executemany(
                _insert_sql(self._sql.sqlite),
                [{**row, "started": time(row["started"]), "written_at": stored_at} for row in rows],
            )

    def _heads(self, conn: Connection, lease_ids: list[str]) -> dict[str, StatementHead]:
        found: dict[str, StatementHead] = {}
        for chunk in chunks(lease_ids):
            for row in conn.execute(
                sa.select(statement_heads).where(statement_heads.c.lease_id.in_(chunk))
            ):
                found[row.lease_id] = StatementHead(**row._mapping)
        return found

    def statement_head(self, lease_id: str) -> StatementHead | None:
        with self.engine.connect() as conn:
            return self._heads(conn, [lease_id]).get(lease_id)

    def statement_page(
        self, lease_id: str, *, after: int = 0, limit: int = 100
    ) -> tuple[list[StoredStatement], int | None]:
        """Records of one session with seq above ``after``, oldest first, and the seq to
        continue after (None: no more)."""
        query = (
            sa.select(statements)
            .where(statements.c.lease_id == lease_id, statements.c.seq > after)
            .order_by(statements.c.seq)
            .limit(limit + 1)
        )
        with self.engine.connect() as conn:
            rows = [_stored(row) for row in conn.execute(query)]
        page = rows[:limit]
        return page, (page[-1].seq if len(rows) > limit and page else None)

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One consistent view of records, heads and seals: a batch committed between
        reading a head and reading the rows would otherwise look like tampering. SQLite's
        read transaction is a snapshot already (WAL); PostgreSQL's needs REPEATABLE READ."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _verdicts(self, conn: Connection, lease_id: str | None) -> Iterator[StatementVerdict]:
        heads_query = sa.select(statement_heads)
        rows_query = sa.select(statements).order_by(statements.c.lease_id, statements.c.seq)
        seals_query = sa.select(audit.c.lease_id, audit.c.detail).where(
            audit.c.event == SEALED_EVENT
        )
        if lease_id is not None:
            heads_query = heads_query.where(statement_heads.c.lease_id == lease_id)
            rows_query = rows_query.where(statements.c.lease_id == lease_id)
            seals_query = seals_query.where(audit.c.lease_id == lease_id)
        heads = {row.lease_id: StatementHead(**row._mapping) for row in conn.execute(heads_query)}
        seals = {row.lease_id: json.loads(row.detail) for row in conn.execute(seals_query)}
        current: str | None = None
        batch: list[StoredStatement] = []
        seen: set[str] = set()
        for row in conn.execute(rows_query):
            record = _stored(row)
            if record.lease_id != current:
                if current is not None:
                    seen.add(current)
                    yield check_chain(current, batch, heads.get(current), seals.get(current))
                current, batch = record.lease_id, []
            batch.append(record)
        if current is not None:
            seen.add(current)
            yield check_chain(current, batch, heads.get(current), seals.get(current))
        for unseen in sorted((set(heads) | set(seals)) - seen):
            yield check_chain(unseen, [], heads.get(unseen), seals.get(unseen))

    def verify_statements(self, lease_id: str) -> StatementVerdict:
        """Recompute one session's chain and compare it with its head and its seal."""
        with self._snapshot() as conn:
            found = list(self._verdicts(conn, lease_id))
        return found[0] if found else StatementVerdict(lease_id=lease_id, records=0, expected=0)

    def verify_all_statements(self) -> Iterator[StatementVerdict]:
        """``verify_statements`` for every session with records or a head, in one pass."""
        with self._snapshot() as conn:
            yield from self._verdicts(conn, None)

    def export_statements(self, since: datetime | None = None) -> Iterator[StoredStatement]:
        """Every record, by session and seq (``since``: those started then or later)."""
        query = sa.select(statements).order_by(statements.c.lease_id, statements.c.seq)
        if since is not None:
            query = query.where(statements.c.started >= since)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield _stored(row)

    def seal_statements(self, now: datetime, grace: float = SEAL_GRACE) -> int:
        """Seal the records of sessions that ended more than ``grace`` seconds ago and are
        not sealed yet: their count and head go into the audit trail, in the same
        transaction. A gateway session without any record is sealed with count 0. Returns
        how many were sealed."""
        cutoff = now - timedelta(seconds=grace)
        ended = sa.and_(
            leases.c.state.not_in(LIVE_STATES),
            leases.c.revoked_at.is_not(None),
            leases.c.revoked_at <= cutoff,
        )
        unsealed = sa.or_(
            sa.and_(statement_heads.c.lease_id.is_not(None), statement_heads.c.sealed_at.is_(None)),
            sa.and_(statement_heads.c.lease_id.is_(None), leases.c.access == "gateway"),
        )
        query = (
            sa.select(
                leases.c.id,
                leases.c.subject,
                leases.c.target,
                statement_heads.c.count,
                statement_heads.c.head,
            )
            .select_from(
                leases.outerjoin(statement_heads, statement_heads.c.lease_id == leases.c.id)
            )
            .where(ended, unsealed)
        )
        # Found without the write lock (a read blocks no writer): the search reads every
        # ended lease, and under the lock it would hold up issuance each sweep. Under the
        # lock, only the candidates are read again, by id, in case another replica or a
        # late batch got there first.
        with self.engine.connect() as conn:
            candidates = [
                row.id
                for row in conn.execute(query.order_by(leases.c.revoked_at).limit(SEAL_BATCH))
            ]
        if not candidates:
            return 0
        with self._write() as conn:
            due = conn.execute(query.where(leases.c.id.in_(candidates))).all()
            if not due:
                return 0
            event = "session.statements_sealed"  # SEALED_EVENT, spelled out for the list test
            events = []
            for row in due:
                count, head = (row.count, row.head) if row.head is not None else (0, GENESIS)
                sealed = {"sealed_at": now, "sealed_count": count, "sealed_head": head}
                if row.head is None:
                    conn.execute(
                        statement_heads.insert().values(
                            lease_id=row.id, count=0, head=GENESIS, **sealed
                        )
                    )
                else:
                    conn.execute(
                        statement_heads.update()
                        .where(statement_heads.c.lease_id == row.id)
                        .values(**sealed)
                    )
                detail = {"count": count, "head": head, "target": row.target}
                events.append((event, row.subject, row.id, detail))
            self._append_audits(conn, now, events)
        return len(due)


def _insert_sql(sqlite: bool) -> str:
    names = [c for c in statements.columns.keys() if c != "id"]
    values = ", ".join(f":{n}" if sqlite else f"%({n})s" for n in names)
    return f"INSERT INTO statements ({', '.join(names)}) VALUES ({values})"


def _text(value: str) -> str:
    """``value`` as both stores can keep it: PostgreSQL refuses NUL in text, and a batch
    it refuses would be retried forever, holding back every later record of the gateway.
    A client may send NUL inside a Query's text; it is kept as U+FFFD, as the gateway
    keeps bytes it cannot decode."""
    return value.replace("\x00", "\ufffd")


def _fields(record: NewStatement, seq: int, gateway: str, written_at: datetime) -> dict[str, Any]:
    """The stored, hashed fields of a record, normalised so that what is read back hashes
    alike (UTC times, a float duration, params as JSON text, no NUL)."""
    started = record.started
    if started.tzinfo is None:
        raise ValueError("naive datetime given to the store")
    return {
        "lease_id": record.lease_id,
        "seq": seq,
        "subject": record.subject,
        "target": record.target,
        "role": record.role,
        "kind": record.kind,
        "sql": _text(record.sql),
        "params_policy": record.params_policy,
        # JSON writes a NUL in a parameter as the six characters \u0000: no NUL reaches SQL
        "params": None if record.params is None else json.dumps(list(record.params)),
        "started": started.astimezone(UTC),
        "duration": float(record.duration),
        "rows": record.rows,
        "bytes_out": int(record.bytes_out),
        "bytes_in": int(record.bytes_in),
        "sqlstate": record.sqlstate,
        "status": record.status,
        "rule": None if record.rule is None else record.rule[:64],  # statements.rule
        "connection": int(record.connection),
        "gateway": gateway,
        "written_at": written_at,
    }


def statement_lines(records: Iterable[StoredStatement]) -> Iterator[str]:
    """JSON lines for a SIEM, one per statement record ("type": "statement"): every stored
    field, params as a list, and the hashes to check the chain with."""
    for r in records:
        fields = r.fields()
        yield json.dumps(
            {
                "type": "statement",
                **fields,
                "started": r.started.isoformat(),
                "written_at": r.written_at.isoformat(),
                "params": r.param_values(),
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            },
            sort_keys=True,
        )
