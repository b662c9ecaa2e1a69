"""The store as a ``RecordSink``: a gateway process hands it to its ``BatchingWriter``, and
each batch becomes one store transaction that continues every session's hash chain
(broker/store/statement_chain.py). A batch that fails raises, and the writer retries it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from dbaccess.broker.store import Store
from dbaccess.broker.store.statement_chain import NewStatement
from dbaccess.gateway.records import StatementRecord

MAX_GATEWAY_NAME = 64  # statements.gateway


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
        self._store.append_statements(
            [to_new_statement(r) for r in records], self.gateway_name, self._clock()
        )


def to_new_statement(record: StatementRecord) -> NewStatement:
    return NewStatement(
        lease_id=record.lease_id,
        subject=record.person,
        target=record.target,
        role=record.role,
        kind=record.kind,
        sql=record.sql,
        params_policy=record.params_policy,
        params=record.params,
        started=record.started,
        duration=record.duration,
        rows=record.rows,
        bytes_out=record.bytes_out,
        bytes_in=record.bytes_in,
        sqlstate=record.sqlstate,
        status=str(record.status),
        connection=record.connection,
        # set by the guardrails (a refused statement names its rule); absent before them
        rule=getattr(record, "rule", None),
    )
