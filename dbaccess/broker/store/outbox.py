"""The webhook outbox: notifications written in the same transaction as what they tell,
claimed and settled by the sender (dbaccess/broker/notify.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from dbaccess.broker.store.audit_chain import AuditTrail
from dbaccess.broker.store.schema import notifications
from dbaccess.timestamps import json_default


class Outbox(AuditTrail):
    """Webhook notifications to send."""

    def enqueue_notifications(
        self, now: datetime, event: str, body: dict[str, Any], webhooks: list[str]
    ) -> None:
        text = json.dumps(body, default=json_default)
        with self._write() as conn:
            conn.execute(
                notifications.insert(),
                [
                    {
                        "created_at": now,
                        "event": event,
                        "webhook": webhook,
                        "body": text,
                        "state": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                    }
                    for webhook in webhooks
                ],
            )

    def claim_notifications(
        self, now: datetime, owner: str, ttl: timedelta, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Due pending notifications nobody else holds, now held by ``owner``."""
        due = sa.and_(
            notifications.c.state == "pending",
            notifications.c.next_attempt_at <= now,
            sa.or_(
                notifications.c.claimed_by.is_(None),
                notifications.c.claimed_by == owner,
                notifications.c.claim_expires_at <= now,
            ),
        )
        with self.engine.connect() as conn:  # the common case: nothing due, no write lock
            if conn.execute(sa.select(notifications.c.id).where(due).limit(1)).first() is None:
                return []
        with self._write() as conn:
            ids = [
                row.id
                for row in conn.execute(
                    sa.select(notifications.c.id)
                    .where(due)
                    .order_by(notifications.c.id)
                    .limit(limit)
                )
            ]
            if not ids:
                return []
            conn.execute(
                notifications.update()
                .where(notifications.c.id.in_(ids))
                .values(claimed_by=owner, claim_expires_at=now + ttl)
            )
            rows = conn.execute(sa.select(notifications).where(notifications.c.id.in_(ids))).all()
        return [dict(row._mapping) for row in rows]

    def settle_notification(
        self,
        notification_id: int,
        owner: str,
        now: datetime,
        *,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        """Delivered (error None); or failed once, to retry at ``retry_at``; or given up
        (``retry_at`` None), which is an audit record."""
        mine = sa.and_(notifications.c.id == notification_id, notifications.c.claimed_by == owner)
        with self._write() as conn:
            row = conn.execute(sa.select(notifications).where(mine)).first()
            if row is None:
                return
            values: dict[str, Any] = {
                "attempts": row.attempts + 1,
                "claimed_by": None,
                "claim_expires_at": None,
                "last_error": None if error is None else error[:200],
            }
            if error is None:
                values.update(state="delivered", settled_at=now)
            elif retry_at is not None:
                values.update(next_attempt_at=retry_at)
            else:
                values.update(state="failed", settled_at=now)
                self._append_audit(
                    conn,
                    now,
                    "notify.failed",
                    None,
                    None,
                    {"event": row.event, "attempts": row.attempts + 1, "error": error[:200]},
                )
            conn.execute(notifications.update().where(mine).values(**values))

    def pending_notifications(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(notifications)
                    .where(notifications.c.state == "pending")
                ).scalar_one()
            )
