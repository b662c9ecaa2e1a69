"""Statement records of gateway sessions: appended in blocks, chained per session, read a
page at a time, verified, and sealed into the main audit trail when the session has ended.

A gateway writes its records in batches; each batch becomes, per session, one block: a row
holding that session's records seq first..last as one JSON array (each record an array of
RECORD_FIELDS), the hash of the session's previous block (the first one: GENESIS) and its
own hash over that and everything stored (audit_chain.block_hash). A row per record cost
the gateway's writer ~70 us a statement, mostly SQLite's insert and a JSON encoding per
record; a block costs a few (bench/gateway.py --store), so auditing keeps up with the relay.
The session's last hash and record count are kept in ``statement_heads``, so deleting the
newest blocks is caught too. When the session has ended (plus a grace period, so the
gateway's last batch lands first), ``seal_statements`` copies count and head into the
audit trail (``session.statements_sealed``), whose own chain then vouches for them. A
record that arrives after the seal is still stored (nothing is lost) and reported as after
the seal. Tampering is located to the block: the first seq of the block that does not fit.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.audit_chain import GENESIS, AuditTrail, block_hash
from dbaccess.broker.store.database import chunks
from dbaccess.broker.store.driver_sql import driver_cursor
from dbaccess.broker.store.schema import (
    LIVE_STATES,
    audit,
    leases,
    statement_blocks,
    statement_edits,
    statement_heads,
)
from dbaccess.timestamps import from_epoch_ns

SEALED_EVENT = "session.statements_sealed"
SEAL_GRACE = 10.0  # seconds after the revocation before a session's records are sealed
SEAL_BATCH = 500  # sessions sealed per transaction
# A chain walked whole is continued by later pages for this long at most: the edit count
# sees edits made through SQL, not a store's file rewritten underneath it.
VERIFIED_TTL = 60.0
VERIFIED_SESSIONS = 256  # sessions whose walked chain a process keeps
_COUNTS_EDITS = "statement_edits SET count = count + 1"  # what the triggers update (0007)

# A record in a block, in this order: what the gateway saw of one statement, in the order
# of the protocol server's field tuple after its session fields (gateway/records.py
# RecordFields), so the gateway stores that tuple's tail as it is. ``started_ns`` is
# nanoseconds since the epoch and ``duration_ns`` nanoseconds (integers: exact, and half the
# cost of floats to encode), ``params`` a list or null (the policy decides), ``rule`` the
# guardrail that refused it.
RECORD_FIELDS = (
    "kind",
    "sql",
    "params_policy",
    "params",
    "started_ns",
    "duration_ns",
    "rows",
    "bytes_out",
    "bytes_in",
    "sqlstate",
    "status",
    "connection",
    "rule",
)


def _encode(records: list[Sequence[Any]]) -> str:
    """A block's records as stored and hashed: compact JSON, text as UTF-8 (not escaped),
    which is byte for byte ``json.dumps(records, separators=(",", ":"),
    ensure_ascii=False)``, so a verifier rebuilds it from an export's lines with the
    standard library (docs/gateway.md, "Records"). orjson, because this runs once per
    statement through the gateway: ~0.15 us a record against the standard library's ~1.7."""
    return orjson.dumps(records).decode()


@dataclass(frozen=True)
class NewBlock:
    """One session's records of a batch, oldest first, each already in RECORD_FIELDS form
    and normalised as the store keeps it (gateway/store_sink.py builds them)."""

    lease_id: str
    subject: str
    target: str
    role: str
    records: list[Sequence[Any]]


def text(value: str) -> str:
    """``value`` as both stores can keep it: PostgreSQL refuses NUL in text, and a batch
    it refuses would be retried forever, holding back every later record of the gateway.
    A client may send NUL inside a Query's text; it is kept as U+FFFD, as the gateway
    keeps bytes it cannot decode. (JSON writes a NUL in a parameter as \\u0000 already.)"""
    return value.replace("\x00", "\ufffd")


@dataclass(frozen=True)
class StoredBlock:
    id: int
    lease_id: str
    first_seq: int
    last_seq: int
    subject: str
    target: str
    role: str
    gateway: str
    written_at: datetime
    records: str  # the JSON text, as stored (and hashed)
    prev_hash: str
    hash: str

    def computed_hash(self) -> str:
        return block_hash(
            self.prev_hash,
            self.lease_id,
            self.first_seq,
            self.last_seq,
            self.subject,
            self.target,
            self.role,
            self.gateway,
            self.written_at.isoformat(),
            self.records,
        )

    def values(self) -> list[list[Any]]:
        """The block's records as stored, one list of RECORD_FIELDS each; none when its
        text is not what the store writes (an edit, which verification reports)."""
        try:
            values = json.loads(self.records)
        except ValueError:
            return []
        if not isinstance(values, list) or len(values) != self.last_seq - self.first_seq + 1:
            return []
        if not all(isinstance(r, list) and len(r) == len(RECORD_FIELDS) for r in values):
            return []
        return values

    def statements(self) -> list[StoredStatement]:
        found = []
        for seq, record in enumerate(self.values(), self.first_seq):
            fields = dict(zip(RECORD_FIELDS, record, strict=True))
            started = _started(fields.pop("started_ns"))
            duration = fields.pop("duration_ns")
            if started is None or not _is_int(duration):
                return []
            found.append(
                StoredStatement(
                    block=self, seq=seq, started=started, duration=duration / 1e9, **fields
                )
            )
        return found


@dataclass(frozen=True)
class StoredStatement:
    block: StoredBlock
    seq: int
    kind: str
    sql: str
    params_policy: str
    params: list[str | None] | None
    started: datetime
    duration: float
    rows: int | None
    bytes_out: int
    bytes_in: int
    sqlstate: str | None
    status: str
    rule: str | None
    connection: int

    # what every record of the block shares
    @property
    def lease_id(self) -> str:
        return self.block.lease_id

    @property
    def subject(self) -> str:
        return self.block.subject

    @property
    def target(self) -> str:
        return self.block.target

    @property
    def role(self) -> str:
        return self.block.role

    @property
    def gateway(self) -> str:
        return self.block.gateway

    @property
    def written_at(self) -> datetime:
        return self.block.written_at

    def param_values(self) -> list[str | None] | None:
        return None if self.params is None else list(self.params)


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
    """What ``verify_statements`` found for one session. ``first_bad`` is the first seq of
    the first block that does not fit (for deleted newest blocks: the seq after the last
    one left); ``after_seal`` counts records stored after the seal."""

    lease_id: str
    records: int  # records found
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


@dataclass(frozen=True)
class Verified:
    """A session's chain as a full walk found it, whole and fitting its head and seal:
    records 1..``count``, the last block's hash ``head``. ``guard`` is what has to stand
    still for that to hold without walking it again (the store's edit count, its triggers,
    the seal); ``at`` when it was walked (monotonic seconds)."""

    count: int
    head: str
    records: int
    sealed_hash: str | None
    guard: tuple[Any, ...]
    at: float


def _block(row: Any) -> StoredBlock:
    return StoredBlock(**row._mapping)


block_of = _block  # for the store's other aggregates (reviews.py)


def check_chain(
    lease_id: str,
    blocks: Iterable[StoredBlock],
    head: StatementHead | None,
    sealed_event: dict[str, Any] | None = None,
    verified: Verified | None = None,
) -> StatementVerdict:
    """Walk one session's blocks in seq order against its head and its seal; with
    ``verified``, only the blocks after that prefix, which a walk found whole before."""
    expected_prev, expected_seq, found = GENESIS, 1, 0
    first_bad: int | None = None
    problem: str | None = None
    hash_at: dict[int, str] = {}
    sealed_count = head.sealed_count if head is not None else None
    if verified is not None:
        expected_prev, expected_seq, found = verified.head, verified.count + 1, verified.records
        if verified.sealed_hash is not None and sealed_count is not None:
            hash_at[sealed_count] = verified.sealed_hash
    for block in blocks:
        found += max(0, block.last_seq - block.first_seq + 1)
        if first_bad is None:
            if block.first_seq != expected_seq:
                first_bad, problem = (
                    expected_seq,
                    f"record {expected_seq} is missing (deleted, or its seq was changed)",
                )
            elif block.prev_hash != expected_prev:
                first_bad, problem = (
                    block.first_seq,
                    "does not link to the records before it (records were deleted, inserted "
                    "or reordered)",
                )
            elif block.last_seq < block.first_seq or block.computed_hash() != block.hash:
                first_bad, problem = (
                    block.first_seq,
                    f"records {block.first_seq}-{block.last_seq}, written together, do not "
                    "match their hash (a record was edited)",
                )
        if sealed_count is not None and block.last_seq == sealed_count:
            hash_at[block.last_seq] = block.hash
        expected_prev, expected_seq = block.hash, block.last_seq + 1
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

    def __init__(self, url: str | sa.URL, *, migrate: bool = True) -> None:
        super().__init__(url, migrate=migrate)
        # Sessions whose chain this process walked whole (page_verdict), the most recently
        # read last; a page after the first continues from there.
        self._verified: OrderedDict[str, Verified] = OrderedDict()
        self._verified_lock = threading.Lock()

    def append_blocks(self, blocks: Sequence[NewBlock], gateway: str, now: datetime) -> None:
        """Store a batch in one transaction, each block continuing its session's chain in
        the order given (several blocks of one session are allowed)."""
        blocks = [block for block in blocks if block.records]
        if not blocks:
            return
        written_at = now.astimezone(UTC)
        written_iso = written_at.isoformat()
        stored_at = self._sql.time(written_at)
        mark = "?" if self._sql.sqlite else "%s"
        with self._write() as conn:
            # On the driver's cursor, as the audit trail's appends: SQLAlchemy's statement
            # building cost more than the rest of a batch's fixed cost (times in the
            # store's form).
            cursor = driver_cursor(conn)
            heads: dict[str, tuple[int, str]] = {}
            for chunk in chunks(list({block.lease_id: None for block in blocks})):
                cursor.execute(
                    "SELECT lease_id, count, head FROM statement_heads "
                    f"WHERE lease_id IN ({', '.join(mark for _ in chunk)})",
                    chunk,
                )
                heads.update((lease, (count, head)) for lease, count, head in cursor.fetchall())
            chain = dict(heads)
            rows = []
            for block in blocks:
                count, prev = chain.get(block.lease_id, (0, GENESIS))
                first, last = count + 1, count + len(block.records)
                records = _encode(block.records)
                digest = block_hash(
                    prev,
                    block.lease_id,
                    first,
                    last,
                    block.subject,
                    block.target,
                    block.role,
                    gateway,
                    written_iso,
                    records,
                )
                rows.append(
                    (block.lease_id, first, last, block.subject, block.target, block.role,
                     gateway, stored_at, records, prev, digest)
                )  # fmt: skip
                chain[block.lease_id] = (last, digest)
            new_heads = [(lease, count, head) for lease, (count, head) in chain.items()
                         if lease not in heads]  # fmt: skip
            moved = [(count, head, lease) for lease, (count, head) in chain.items()
                     if lease in heads]  # fmt: skip
            if new_heads:
                cursor.executemany(
                    f"INSERT INTO statement_heads (lease_id, count, head) "
                    f"VALUES ({mark}, {mark}, {mark})",
                    new_heads,
                )
            if moved:
                cursor.executemany(
                    f"UPDATE statement_heads SET count = {mark}, head = {mark} "
                    f"WHERE lease_id = {mark}",
                    moved,
                )
            cursor.executemany(_insert_sql(self._sql.sqlite), rows)

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
        blocks = statement_blocks.c
        # seqs have no gaps: records after+1 .. after+limit+1 (one more, to know whether
        # there are more) are in the block holding after+1 and those starting after it, by
        # after+limit+1. Two seeks on (lease_id, first_seq): "last_seq > after" alone
        # would read every block from the session's first, a page costing its position.
        holding = (
            sa.select(statement_blocks)
            .where(blocks.lease_id == lease_id, blocks.first_seq <= after + 1)
            .order_by(blocks.first_seq.desc())
            .limit(1)
        )
        following = (
            sa.select(statement_blocks)
            .where(
                blocks.lease_id == lease_id,
                blocks.first_seq > after + 1,
                blocks.first_seq <= after + limit + 1,
            )
            .order_by(blocks.first_seq)
        )
        found: list[StoredStatement] = []
        with self.engine.connect() as conn:
            for row in [*conn.execute(holding), *conn.execute(following)]:
                found += [r for r in _block(row).statements() if after < r.seq <= after + limit + 1]
        page = found[:limit]
        return page, (page[-1].seq if len(found) > limit and page else None)

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One consistent view of blocks, heads and seals: a batch committed between
        reading a head and reading the blocks would otherwise look like tampering. SQLite's
        read transaction is a snapshot already (WAL); PostgreSQL's needs REPEATABLE READ."""
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _verdicts(self, conn: Connection, lease_id: str | None) -> Iterator[StatementVerdict]:
        heads_query = sa.select(statement_heads)
        blocks_query = sa.select(statement_blocks).order_by(
            statement_blocks.c.lease_id, statement_blocks.c.first_seq
        )
        seals_query = sa.select(audit.c.lease_id, audit.c.detail).where(
            audit.c.event == SEALED_EVENT
        )
        if lease_id is not None:
            heads_query = heads_query.where(statement_heads.c.lease_id == lease_id)
            blocks_query = blocks_query.where(statement_blocks.c.lease_id == lease_id)
            seals_query = seals_query.where(audit.c.lease_id == lease_id)
        heads = {row.lease_id: StatementHead(**row._mapping) for row in conn.execute(heads_query)}
        seals = {row.lease_id: json.loads(row.detail) for row in conn.execute(seals_query)}
        current: str | None = None
        batch: list[StoredBlock] = []
        seen: set[str] = set()
        for row in conn.execute(blocks_query):
            block = _block(row)
            if block.lease_id != current:
                if current is not None:
                    seen.add(current)
                    yield check_chain(current, batch, heads.get(current), seals.get(current))
                current, batch = block.lease_id, []
            batch.append(block)
        if current is not None:
            seen.add(current)
            yield check_chain(current, batch, heads.get(current), seals.get(current))
        for unseen in sorted((set(heads) | set(seals)) - seen):
            yield check_chain(unseen, [], heads.get(unseen), seals.get(unseen))

    def _guard(self, conn: Connection, head: StatementHead | None, seal: Any) -> tuple[Any, ...]:
        """What must not change for a walked chain to stand without walking it again:
        the store's count of edits to blocks, the triggers that keep it (dropped,
        disabled or rewritten, they would count nothing), and the session's seal. None
        of it changes when a gateway appends. An empty guard: no count kept, walk."""
        edits = conn.execute(
            sa.select(statement_edits.c.count).where(statement_edits.c.id == 1)
        ).scalar()
        if self.dialect == "sqlite":
            triggers = tuple(
                conn.execute(
                    sa.text(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                        "AND tbl_name = 'statement_blocks' ORDER BY name"
                    )
                ).all()
            )
            # exactly as migration 0007 wrote them (SQLite keeps the CREATE text)
            intact = {
                f"CREATE TRIGGER statement_blocks_{done} AFTER {event} ON statement_blocks "
                f"BEGIN UPDATE {_COUNTS_EDITS}; END"
                for done, event in (("updated", "UPDATE"), ("deleted", "DELETE"))
            } <= {sql for _, sql in triggers}
        else:
            triggers = tuple(
                conn.execute(
                    sa.text(
                        "SELECT t.tgname, t.tgenabled, t.tgtype, t.tgqual IS NULL, p.prosrc "
                        "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                        "WHERE t.tgrelid = 'statement_blocks'::regclass ORDER BY t.tgname"
                    )
                ).all()
            )
            # enabled as created ('O') or always ('A'), not disabled or replica-only; after
            # each UPDATE, DELETE and TRUNCATE (tgtype bits 16, 8, 32), without a WHEN
            intact = any(
                name == "statement_blocks_edited"
                and enabled in ("O", "A")
                and kind & 56 == 56
                and unconditional
                and f"UPDATE {_COUNTS_EDITS};" in src
                for name, enabled, kind, unconditional, src in triggers
            )
        if edits is None or not intact:
            return ()
        sealed = None if head is None else (head.sealed_count, head.sealed_head)
        return (edits, triggers, sealed, json.dumps(seal, sort_keys=True, default=str))

    def page_verdict(self, lease_id: str, *, after: int = 0) -> StatementVerdict:
        """``verify_statements`` for one page of a listing, at the cost of the blocks
        written since the last page. The first page (``after`` 0) walks the whole chain;
        a later one continues from the chain this process walked for the session, if
        nothing that walk relied on changed since (``_guard``: no block edited, deleted,
        or its triggers touched, the seal as it was) and it is under VERIFIED_TTL old.
        An edit anywhere in the chain, before the page too, is so reported by the next
        page read: paging through n records costs one walk, not one a page (O(n), not
        O(n^2); bench/statement_pages.py). ``verify_statements`` always walks."""
        now = time.monotonic()
        with self._verified_lock:
            known = self._verified.get(lease_id)
        with self._snapshot() as conn:
            head = self._heads(conn, [lease_id]).get(lease_id)
            seal = conn.execute(
                sa.select(audit.c.detail)
                .where(audit.c.lease_id == lease_id, audit.c.event == SEALED_EVENT)
                .order_by(audit.c.seq.desc())  # as _verdicts: the last one
                .limit(1)
            ).scalar()
            seal_event = None if seal is None else json.loads(seal)
            guard = self._guard(conn, head, seal_event)
            usable = (
                known is not None
                and after > 0
                and guard
                and known.guard == guard
                and now - known.at < VERIFIED_TTL
                and head is not None
                and head.count >= known.count
            )
            if usable:
                assert known is not None
                new = conn.execute(
                    sa.select(statement_blocks)
                    .where(
                        statement_blocks.c.lease_id == lease_id,
                        # an index seek; a block reaching back into the walked part
                        # leaves the chain short of the head, which is reported too
                        statement_blocks.c.first_seq > known.count,
                    )
                    .order_by(statement_blocks.c.first_seq)
                )
                verdict = check_chain(
                    lease_id, (_block(row) for row in new), head, seal_event, known
                )
                walked_at = known.at
            else:
                found = list(self._verdicts(conn, lease_id))
                verdict = found[0] if found else StatementVerdict(lease_id, 0, 0)
                walked_at = now
        with self._verified_lock:
            if verdict.ok and guard and head is not None and head.count == verdict.records:
                sealed_hash = None
                if head.sealed_count is not None and 0 < head.sealed_count <= head.count:
                    sealed_hash = head.sealed_head
                self._verified[lease_id] = Verified(
                    head.count, head.head, verdict.records, sealed_hash, guard, walked_at
                )
                self._verified.move_to_end(lease_id)
                while len(self._verified) > VERIFIED_SESSIONS:
                    self._verified.popitem(last=False)
            else:
                self._verified.pop(lease_id, None)
        return verdict

    def verify_statements(self, lease_id: str) -> StatementVerdict:
        """Recompute one session's chain and compare it with its head and its seal."""
        with self._snapshot() as conn:
            found = list(self._verdicts(conn, lease_id))
        return found[0] if found else StatementVerdict(lease_id=lease_id, records=0, expected=0)

    def verify_all_statements(self) -> Iterator[StatementVerdict]:
        """``verify_statements`` for every session with records or a head, in one pass."""
        with self._snapshot() as conn:
            yield from self._verdicts(conn, None)

    def export_blocks(self, since: datetime | None = None) -> Iterator[StoredBlock]:
        """Every block, by session and seq (``since``: those with a record started then or
        later; a block is written after all its records started)."""
        query = sa.select(statement_blocks).order_by(
            statement_blocks.c.lease_id, statement_blocks.c.first_seq
        )
        if since is not None:
            query = query.where(statement_blocks.c.written_at >= since)
        with self.engine.connect() as conn:
            with conn.execution_options(yield_per=64).execute(query) as rows:
                for row in rows:
                    yield _block(row)

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
    names = [c for c in statement_blocks.columns.keys() if c != "id"]
    values = ", ".join("?" if sqlite else "%s" for _ in names)
    return f"INSERT INTO statement_blocks ({', '.join(names)}) VALUES ({values})"


def statement_lines(blocks: Iterable[StoredBlock], since: datetime | None = None) -> Iterator[str]:
    """JSON lines for a SIEM, one per statement record ("type": "statement"): the record's
    fields and its block's (seq range, hashes), enough to check the chain from the export
    alone (docs/gateway.md, "Records"). ``since``: only records started then or later."""
    for block in blocks:
        shared = {
            "type": "statement",
            "lease_id": block.lease_id,
            "subject": block.subject,
            "target": block.target,
            "role": block.role,
            "gateway": block.gateway,
            "written_at": block.written_at.isoformat(),
            "block": [block.first_seq, block.last_seq],
            "prev_hash": block.prev_hash,
            "hash": block.hash,
        }
        # the values as stored, so that the lines rebuild the block's text exactly, and
        # the start in ISO form beside them
        for seq, record in enumerate(block.values(), block.first_seq):
            fields = dict(zip(RECORD_FIELDS, record, strict=True))
            started = _started(fields["started_ns"])
            if since is not None and started is not None and started < since:
                continue
            iso = None if started is None else started.isoformat()
            yield json.dumps({**shared, "seq": seq, **fields, "started": iso}, sort_keys=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _started(value: Any) -> datetime | None:
    """A record's start; None for what the store does not write (an edit)."""
    if not _is_int(value):
        return None
    try:
        return from_epoch_ns(value)
    except OverflowError:
        return None
