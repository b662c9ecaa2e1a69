"""The few statements every issuance runs, on the driver's cursor directly (SQLAlchemy's
statement building costs as much as the statements themselves on that path)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbaccess.broker.store.schema import LIVE_STATES, audit, leases

_LEASE_COLUMNS = (
    "id",
    "subject",
    "email",
    "target",
    "role",
    "engine",
    "db_user",
    "state",
    "rule",
    "reason",
    "ticket",
    "created_at",
    "expires_at",
    "attempts",
    "kind",
    "incident",
    "drill",
    "request_id",
    "user_agent",
    "review_state",
    "access",
    "gateway_verifier",
)


@dataclass(frozen=True)
class DriverSql:
    """The statements every issuance runs — lease insert, activation, audit append — as
    the driver's own SQL, run on its cursor inside the store's transaction.

    Through SQLAlchemy each cost ~0.05 ms of Python (compiled-cache lookup, events, result
    set-up), more than SQLite's own work, and an issuance runs six; on a machine whose cores
    the broker shares with the target database that is throughput lost (bench/issuance.py).
    Only constant table and column names are written into the SQL; every value is bound."""

    sqlite: bool
    lease_insert: str
    activate: str
    last_hash: str
    audit_insert: str
    live_counts: str

    @classmethod
    def for_dialect(cls, dialect: str) -> DriverSql:
        sqlite = dialect == "sqlite"  # else PostgreSQL through psycopg (settings allow no other)

        def param(name: str) -> str:
            return f":{name}" if sqlite else f"%({name})s"

        def insert(table: sa.Table, columns: Iterable[str]) -> str:
            names = list(columns)
            assert set(names) <= set(table.columns.keys())
            return (
                f"INSERT INTO {table.name} ({', '.join(names)}) "
                f"VALUES ({', '.join(param(n) for n in names)})"
            )

        return cls(
            sqlite=sqlite,
            lease_insert=insert(leases, _LEASE_COLUMNS),
            activate=f"UPDATE leases SET state = 'active' WHERE id = {param('id')} "
            "AND state = 'creating'",
            last_hash="SELECT hash FROM audit ORDER BY seq DESC LIMIT 1",
            audit_insert=insert(audit, [c for c in audit.columns.keys() if c != "seq"]),
            live_counts=f"SELECT subject = {param('subject')}, role, count(*) FROM leases "
            f"WHERE target = {param('target')} AND kind = {param('kind')} AND state IN "
            f"({', '.join(repr(s) for s in LIVE_STATES)}) GROUP BY 1, 2",
        )

    def time(self, value: datetime) -> datetime | str:
        """A time as UTCDateTime stores it: naive UTC, and on SQLite in the text form
        SQLAlchemy writes (so reads through SQLAlchemy and comparisons in SQL agree)."""
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")  # as UTCDateTime does
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(" ", "microseconds") if self.sqlite else naive


def driver_cursor(conn: Connection) -> Any:
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
