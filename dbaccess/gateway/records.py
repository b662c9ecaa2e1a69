"""Statement records: one per statement a client runs through the gateway (engine-neutral).

The protocol server hands each finished record to a ``BatchingWriter``: on the hot path as a
plain tuple of its fields (``add_fields``: a deque append, no lock, no datetime), which the
writer's own thread turns into a ``StatementRecord`` and delivers in order, in batches, to a
``RecordSink`` (the store; a list in tests), so the hot path never waits for a write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice, repeat
from typing import Literal, Protocol, cast

from dbaccess.timestamps import from_epoch_ns, to_epoch_ns

log = logging.getLogger(__name__)
_NEVER = object()  # a sentinel no deque holds

Kind = Literal["query", "execute", "copy", "function"]
ParamsPolicy = Literal["none", "redacted", "full"]
# completed: the server answered it (sqlstate None) or refused it (sqlstate set);
# not_run: an earlier statement of the same pipeline failed, so the server skipped it;
# interrupted: the connection ended before the server's answer was complete;
# refused: a guardrail stopped it (``rule`` names which): before execution, nothing reached
# the server, or during its answer (a rows or bytes limit), the rest was not forwarded.
Status = Literal["completed", "not_run", "interrupted", "refused"]


@dataclass(frozen=True, slots=True)
class StatementRecord:
    lease_id: str
    person: str
    target: str
    role: str
    kind: Kind
    sql: str
    params_policy: ParamsPolicy
    params: tuple[str | None, ...] | None  # None unless the policy shows them
    started: datetime
    duration: float  # seconds, from the client's message to the server's last answer
    rows: int | None  # returned or affected, as the server counted them
    bytes_out: int  # server -> client bytes of the answer
    bytes_in: int  # client -> server COPY data
    sqlstate: str | None  # the server's error, None when it succeeded
    status: Status
    connection: int  # the gateway's number for the client connection
    rule: str | None = None  # the guardrail that refused it (guardrails.py's rule names)


# StatementRecord's fields in order, ``started`` as nanoseconds since the epoch and
# ``duration`` in nanoseconds: what the protocol server builds per statement (integers: a
# float costs twice as much to encode as JSON, and these are encoded once per statement);
# the writer thread makes the record of it.
RecordFields = tuple[
    str,
    str,
    str,
    str,
    Kind,
    str,
    ParamsPolicy,
    "tuple[str | None, ...] | None",
    int,
    int,
    "int | None",
    int,
    int,
    "str | None",
    Status,
    int,
    "str | None",
]


def from_fields(fields: RecordFields) -> StatementRecord:
    (lease, person, target, role, kind, sql, policy, params, started, duration) = fields[:10]
    return StatementRecord(
        lease,
        person,
        target,
        role,
        kind,
        sql,
        policy,
        params,
        from_epoch_ns(started),
        duration / 1e9,
        *fields[10:],
    )


def to_fields(record: StatementRecord) -> RecordFields:
    return (
        record.lease_id,
        record.person,
        record.target,
        record.role,
        record.kind,
        record.sql,
        record.params_policy,
        record.params,
        to_epoch_ns(record.started),
        round(record.duration * 1e9),
        record.rows,
        record.bytes_out,
        record.bytes_in,
        record.sqlstate,
        record.status,
        record.connection,
        record.rule,
    )


class RecordSink(Protocol):
    def write(self, records: Sequence[StatementRecord]) -> None:
        """Keep a batch of records, in order; raise if they were not kept."""


class FieldsSink(RecordSink, Protocol):
    """A sink that takes the protocol server's field tuples as they are (the store's: it
    needs no record object, and making one per statement would be half its cost)."""

    def write_fields(self, batch: Sequence[RecordFields]) -> None: ...


# Records the writer holds before statements are refused: at 10,000 statements a second,
# 5 s of a store that takes nothing; a few tens of MB of memory.
MAX_UNWRITTEN = 50_000


class MemorySink:
    def __init__(self) -> None:
        self.records: list[StatementRecord] = []
        self.batches = 0
        self._lock = threading.Lock()

    def write(self, records: Sequence[StatementRecord]) -> None:
        with self._lock:
            self.records.extend(records)
            self.batches += 1

    def for_lease(self, lease_id: str) -> list[StatementRecord]:
        with self._lock:
            return [r for r in self.records if r.lease_id == lease_id]


class BatchingWriter:
    """Delivers records in order, off the caller's thread; ``close`` delivers the rest."""

    def __init__(
        self,
        sink: RecordSink,
        *,
        # a batch's fixed cost (its transaction and commit) is ~0.5 ms: at 2,000 records
        # it is a quarter of a microsecond each (bench/gateway.py's store is SQLite)
        max_batch: int = 2000,
        max_delay: float = 0.2,
        retry_delay: float = 1.0,
        max_unwritten: int = MAX_UNWRITTEN,
        log_every: float = 60.0,
    ) -> None:
        self._sink = sink
        # A store that is down fails a try every retry_delay: the first failure is logged
        # at once, then one line per log_every with how many more, and one when records
        # are written again (the writer's thread alone reads and sets these).
        self._log_every = log_every
        self._failing: _Outage | None = None
        self._max_unwritten = max_unwritten
        # True while more than max_unwritten records wait (the sink fails or is slow): the
        # protocol server then refuses new statements rather than run what it cannot record
        # or hold records without bound. Set by the caller's thread, cleared by the
        # writer's once half have been written; a bool, read and written atomically.
        self.backlogged = False
        self._raw = callable(getattr(sink, "write_fields", None))
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._retry_delay = retry_delay
        # The records not taken yet. Appended to without the lock (deque.append is atomic);
        # the thread is woken only when a batch is full or on flush/close, else it looks
        # every max_delay. ``add_fields`` is: append to ``queue`` while it is shorter than
        # ``room``, else ``overflow(record)`` (a batch is full, too many records are
        # unwritten, or the writer is closed); the protocol server's compiled relay does
        # those steps itself, without a Python call per record.
        self.queue: deque[StatementRecord | RecordFields] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = 0  # records the writer's thread has taken, not delivered or lost
        self.room = 0  # set by _set_room, from the writer's thread or close (an int: atomic)
        self._set_room()
        self._flushing = False
        self.lost = 0  # records a failing sink never took before close
        # refusals *because* records cannot be written, past twice max_unwritten: counted,
        # not recorded (none of those statements ran, and a record each would grow the
        # very backlog they answer, as fast as a client pipelines statements)
        self.unrecorded_refusals = 0
        self._taken = 0  # by the writer's thread, in order
        self._done = 0  # delivered or lost
        self._thread = threading.Thread(target=self._run, name="gateway-records", daemon=True)
        self._thread.start()

    def add(self, record: StatementRecord) -> None:
        # turned into the sink's form here, on the caller's thread (where a record that
        # cannot be converted raises), so a field-tuple sink's batch is taken as it is
        self.add_fields(to_fields(record) if self._raw else record)

    def add_fields(self, record: StatementRecord | RecordFields) -> None:
        """Called from one thread (the event loop's). Field tuples (the protocol server's);
        a record object is meant for ``add``, and is converted by the writer's thread if
        it comes here."""
        queue = self.queue
        if len(queue) < self.room:
            queue.append(record)
        else:
            self.overflow(record)

    def overflow(self, record: StatementRecord | RecordFields) -> None:
        """Add ``record`` to a queue already ``room`` long: refuse it if closed (before
        it is queued), mark a backlog, wake the writer for a full batch."""
        if self._closed:
            raise RuntimeError("the record writer is closed")
        queue = self.queue
        queue.append(record)
        # not written yet: those queued and the batch the writer holds (a failing store
        # keeps one batch in its hands, up to max_batch, while the rest piles up)
        unwritten = len(queue) + self._in_flight
        if unwritten > self._max_unwritten and not self.backlogged:
            self.backlogged = True
            log.error(
                "%d statement records are not written yet: new statements are refused "
                "until the store takes them",
                unwritten,
            )
        if len(queue) == self._max_batch:
            with self._cond:
                self._cond.notify()

    def _set_room(self) -> None:
        """``room``: how long the queue may be for a record to be appended without
        ``overflow`` (under the lock, or before the thread starts; 0 once closed)."""
        self.room = (
            0 if self._closed else min(self._max_batch - 1, self._max_unwritten - self._in_flight)
        )

    def _unwritten(self) -> int:
        return len(self.queue) + self._in_flight

    def room_for_refusal(self) -> bool:
        """Whether a refusal for the backlog may still be recorded (the caller's thread);
        False counts it in ``unrecorded_refusals`` instead."""
        if self._unwritten() <= 2 * self._max_unwritten:
            return True
        self.unrecorded_refusals += 1
        return False

    def flush(self, timeout: float = 10) -> bool:
        """Wait until every record added so far is delivered (tests, shutdown)."""
        with self._cond:
            target = self._taken + len(self.queue)  # every record added so far
            self._flushing = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._done >= target, timeout)
            finally:
                self._flushing = False

    def close(self, timeout: float | None = 30) -> None:
        with self._cond:
            self._closed = True
            self._set_room()
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._closed
                        or len(self.queue) >= self._max_batch
                        or (self._flushing and bool(self.queue))
                    ),
                    timeout=self._max_delay,
                )
                pending = self.queue
                # popleft called in a C loop (islice over iter(popleft, sentinel)): a
                # Python loop here cost a tenth of the writer's time per record
                taken = list(
                    islice(iter(pending.popleft, _NEVER), min(len(pending), self._max_batch))
                )
                # held from here: counted before the lock is let go (the event loop reads
                # these counts without it)
                self._taken += len(taken)
                self._in_flight = len(taken)
                self._set_room()
                closing = self._closed
                more = bool(pending)
            # converted outside the lock, which the event loop takes for a full batch
            try:
                batch = self._fields(taken) if self._raw else self._convert(taken)
            except Exception as exc:  # a record no sink can take: lost, said, not a hang
                log.error(
                    "%d statement records could not be converted for the store (%s): lost",
                    len(taken),
                    type(exc).__name__,
                )
                with self._cond:
                    self.lost += len(taken)
                    self._done += len(taken)
                    self._in_flight = 0
                    self._set_room()
                    self._cond.notify_all()
                if closing and not more:
                    return
                continue
            if batch and not self._deliver(batch):
                with self._cond:
                    left = 0
                    while self.queue:  # one by one: an append meanwhile is counted too
                        self.queue.popleft()
                        left += 1
                    self.lost += len(batch) + left
                    self._taken += left
                    self._done += len(batch) + left
                    self._in_flight = 0
                    self._cond.notify_all()
                return
            if batch:
                with self._cond:
                    self._done += len(batch)
                    self._in_flight = 0
                    self._set_room()
                    self._cond.notify_all()
                if self.backlogged and self._unwritten() <= self._max_unwritten // 2:
                    self.backlogged = False
                    skipped, self.unrecorded_refusals = self.unrecorded_refusals, 0
                    log.warning(
                        "statement records are written again: statements run again%s",
                        f" ({skipped} refusals while the store was unreachable were counted,"
                        " not recorded: none of those statements ran)"
                        if skipped
                        else "",
                    )
            if closing and not more:
                return

    @staticmethod
    def _fields(taken: list[StatementRecord | RecordFields]) -> list[RecordFields]:
        """The batch as field tuples, for a sink that takes them: as it is, unless a record
        object came through add_fields rather than add (checked in a C loop)."""
        if any(map(isinstance, taken, repeat(StatementRecord))):
            return [to_fields(i) if isinstance(i, StatementRecord) else i for i in taken]
        return cast(list[RecordFields], taken)

    @staticmethod
    def _convert(taken: list[StatementRecord | RecordFields]) -> list[StatementRecord]:
        """The batch as records, for a sink that takes them (a field-tuple sink's: _fields)."""
        return [i if isinstance(i, StatementRecord) else from_fields(i) for i in taken]

    def _deliver(self, batch: list[StatementRecord] | list[RecordFields]) -> bool:
        """Write one batch, retrying while open; False when given up after close."""
        tries_after_close = 0
        while True:
            try:
                if self._raw:
                    cast(FieldsSink, self._sink).write_fields(cast(list[RecordFields], batch))
                else:
                    self._sink.write(cast(list[StatementRecord], batch))
            except Exception as exc:  # the sink's own failure; records stay in order
                self._failed(type(exc).__name__)
            else:
                self._recovered()
                return True
            with self._cond:
                if self._closed:
                    tries_after_close += 1
                    if tries_after_close > 1:
                        return False
                    continue
                self._cond.wait(self._retry_delay)

    def _failed(self, error: str) -> None:
        now = time.monotonic()
        outage = self._failing
        if outage is None:
            self._failing = _Outage(started=now, logged=now)
            log.warning(
                "statement records not written (%s), retrying every %g s",
                error,
                self._retry_delay,
                extra={"error": error},
            )
            return
        outage.tries += 1
        outage.unlogged += 1
        if now - outage.logged >= self._log_every:
            log.warning(
                "statement records still not written (%s): %d more failed tries in %.0f s",
                error,
                outage.unlogged,
                now - outage.logged,
                extra={"error": error, "failed_tries": outage.tries},
            )
            outage.logged, outage.unlogged = now, 0

    def _recovered(self) -> None:
        outage, self._failing = self._failing, None
        if outage is not None:
            lasted = time.monotonic() - outage.started
            log.info(
                "statement records are written again after %.1f s and %d failed tries",
                lasted,
                outage.tries,
                extra={"outage_s": round(lasted, 1), "failed_tries": outage.tries},
            )


@dataclass
class _Outage:
    """The sink's failures since the last write that worked."""

    started: float  # monotonic
    logged: float  # when the last line about it was logged
    tries: int = 1  # failed tries in all
    unlogged: int = 0  # failed tries since that line
