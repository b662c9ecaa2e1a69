"""Draw docs/img/incident-review-timeline.png: the timeline of an incident review's HTML
page, for a made-up incident (two break-glass sessions through the gateway, one flagged
DDL, one late revocation), with the broker's own drawing code.

    .venv/bin/python scripts/review_picture.py [OUT.png]
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbaccess.broker.review_report import timeline  # noqa: E402
from dbaccess.wire import IncidentReport, ReviewFlag, ReviewSession, ReviewStatement  # noqa: E402

T0 = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)


def statements(
    start: datetime, count: int, every: int, ddl_at: int | None
) -> list[ReviewStatement]:
    return [
        ReviewStatement(
            seq=i,
            started=start + timedelta(seconds=every * i),
            duration=0.004,
            sql="ALTER TABLE orders ADD COLUMN note text" if i == ddl_at else "SELECT ...",
            classes=["ddl"] if i == ddl_at else ["read"],
            rows=1,
            status="completed",
        )  # fmt: skip
        for i in range(count)
    ]


def session(name: str, start: datetime, minutes: int, revoked_after: int, ddl_at: int | None,
            count: int) -> ReviewSession:  # fmt: skip
    end = start + timedelta(minutes=minutes)
    return ReviewSession(
        id=f"{name}-session", subject=name, email=f"{name}@example.com", target="prod",
        role="incident_rw", db_user=f"dba_{name}", reason="orders stuck", state="revoked",
        access="gateway", created_at=start, expires_at=start + timedelta(hours=1),
        ended_at=end, revoked_at=end + timedelta(seconds=revoked_after),
        statements=statements(start + timedelta(minutes=1), count, 20, ddl_at),
        statements_recorded=True, chain_ok=True,
    )  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/incident-review-timeline.png")
    alice = session("alice", T0 + timedelta(minutes=2), 40, 1, None, 110)
    bob = session("bob", T0 + timedelta(minutes=15), 30, 300, 30, 80)
    report = IncidentReport(
        incident="INC-4711", generated_at=T0 + timedelta(hours=2), opened_at=alice.created_at,
        closed_at=T0 + timedelta(minutes=70), sessions=[alice, bob],
        flags=[
            ReviewFlag(kind="ddl", message="DDL", session_id=bob.id, seq=30),
            ReviewFlag(kind="late_revocation", message="revoked 300 s after", session_id=bob.id),
        ],
        bulk_rows=10000, revoke_within_seconds=30,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(timeline(report, "png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
