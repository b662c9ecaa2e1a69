"""Post-incident reviews of break-glass leases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dbaccess.broker.store.leasing import Leasing
from dbaccess.broker.store.rows import Conflict, Lease
from dbaccess.broker.store.schema import audit, leases, statement_blocks
from dbaccess.broker.store.statement_chain import StoredStatement, block_of


class Reviews(Leasing):
    """Break-glass reviews."""

    def drills(self) -> list[tuple[str, str | None, datetime | None, int]]:
        """Per person who has broken the glass, drills included: an email, the last drill
        (None: never), and how many break-glass sessions in all."""
        column = leases.c.created_at
        last = sa.type_coerce(
            sa.func.max(sa.case((leases.c.drill == sa.true(), column), else_=None)), column.type
        )
        query = (
            sa.select(leases.c.subject, sa.func.max(leases.c.email), last, sa.func.count())
            .where(leases.c.kind == "breakglass")
            .group_by(leases.c.subject)
            .order_by(leases.c.subject)
        )
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2], int(r[3])) for r in conn.execute(query)]

    def last_drill(self) -> datetime | None:
        column = leases.c.created_at
        query = sa.select(sa.type_coerce(sa.func.max(column), column.type)).where(
            leases.c.kind == "breakglass", leases.c.drill == sa.true()
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def last_event_at(self, event: str) -> datetime | None:
        column = audit.c.at
        query = sa.select(sa.type_coerce(sa.func.max(column), column.type)).where(
            audit.c.event == event
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def incident_sessions(self, incident: str) -> list[Lease]:
        """Every break-glass lease of ``incident``, oldest first (drills included)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases)
                .where(leases.c.kind == "breakglass", leases.c.incident == incident)
                .order_by(leases.c.created_at, leases.c.id)
            ).all()
        return [Lease(**row._mapping) for row in rows]

    def session_statements(self, lease_id: str) -> list[StoredStatement]:
        """Every statement record of one session, by seq (a review reads them all)."""
        query = (
            sa.select(statement_blocks)
            .where(statement_blocks.c.lease_id == lease_id)
            .order_by(statement_blocks.c.first_seq)
        )
        found: list[StoredStatement] = []
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found += block_of(row).statements()
        return found

    def open_reviews(self) -> list[Lease]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(leases)
                .where(leases.c.review_state == "open")
                .order_by(leases.c.created_at)
            ).all()
        return [Lease(**row._mapping) for row in rows]

    def close_review(
        self,
        lease_id: str,
        by: str,
        note: str,
        now: datetime,
        origin: dict[str, Any],
        report_sha256: str | None = None,
    ) -> Lease:
        with self._write() as conn:
            row = conn.execute(sa.select(leases).where(leases.c.id == lease_id)).first()
            if row is None or row.kind != "breakglass":
                raise LookupError(lease_id)
            if row.review_state != "open":
                raise Conflict(f"the review of {lease_id} was closed by {row.reviewed_by}")
            if by == row.subject:
                raise Conflict("the user who broke the glass cannot close its review")
            conn.execute(
                leases.update()
                .where(leases.c.id == lease_id)
                .values(review_state="closed", reviewed_by=by, reviewed_at=now, review_note=note)
            )
            self._append_audit(
                conn,
                now,
                "review.closed",
                by,
                lease_id,
                {
                    "user": row.subject,
                    "target": row.target,
                    "incident": row.incident,
                    "drill": row.drill,
                    "note": note,
                    # the incident's report as the reviewer closed it (incident_review.py)
                    "report_sha256": report_sha256,
                    **origin,
                },
            )
        lease = self.get(lease_id)
        assert lease is not None
        return lease
