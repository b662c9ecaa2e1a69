"""An incident review of a long break-glass session: building the report from the store
and rendering it, as ``dbaccess review INC-1 --format html`` has the broker do.

    python bench/review_report.py [--statements 10000] [--sessions 1] [--per-block 100]

Set-up (not measured): ``--sessions`` break-glass leases of incident INC-1 in a fresh
SQLite store, their ``--statements`` records in all (each a different SQL text, as a
real session's are) written by the gateway's StoreSink ``--per-block`` records a batch.
Then, timed once each in this process (a broker renders a report in a process that has
done it before; the first render's imports are shown on their own line):

- build: the report as data (every record read, classified and its chain verified);
- md, html: rendering (html: the Jinja2 page and the matplotlib timeline, inline SVG).

The target (issue 15) is under 5 s for an HTML report of 10,000 statements; ``ratio``
is the time over that target (below 1 meets it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table  # noqa: E402
from dbaccess.broker.review_report import render_html, render_markdown  # noqa: E402
from dbaccess.broker.services.incident_review import IncidentReviews  # noqa: E402
from dbaccess.broker.settings import ReviewSection  # noqa: E402
from dbaccess.broker.store import Store  # noqa: E402
from dbaccess.gateway.records import StatementRecord  # noqa: E402
from dbaccess.gateway.store_sink import StoreSink  # noqa: E402

TARGET_SECONDS = 5.0
QUERIES = (
    "SELECT * FROM orders WHERE id = {n}",
    "UPDATE orders SET state = 'paid' WHERE id = {n}",
    "SELECT count(*) FROM order_lines WHERE order_id = {n} AND qty > 1",
    "INSERT INTO audit_notes (order_id, note) VALUES ({n}, 'checked')",
)


def fill(store: Store, sessions: int, statements: int, per_block: int) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    sink = StoreSink(store, "gw-bench")
    for s in range(sessions):
        lease = store.open_lease(
            now=start + timedelta(minutes=5 * s),
            subject=f"oncall{s}",
            email=f"oncall{s}@example.com",
            target="prod",
            role="readwrite",
            engine="postgres",
            db_user=f"bg_{s}",
            rule="breakglass",
            reason="orders stuck",
            ticket="INC-1",
            expires_at=start + timedelta(minutes=5 * s + 60),
            source=None,
            kind="breakglass",
            incident="INC-1",
            access="gateway",
        )
        count = statements // sessions
        batch: list[StatementRecord] = []
        for n in range(count):
            batch.append(
                StatementRecord(
                    lease_id=lease.id,
                    person=lease.subject,
                    target="prod",
                    role="readwrite",
                    kind="query",
                    sql=QUERIES[n % len(QUERIES)].format(n=n),
                    params_policy="none",
                    params=None,
                    started=start + timedelta(minutes=5 * s, seconds=n * 3000 / count),
                    duration=0.001,
                    rows=n % 50,
                    bytes_out=100,
                    bytes_in=0,
                    sqlstate=None,
                    status="completed",
                    connection=1,
                )  # fmt: skip
            )
            if len(batch) == per_block:
                sink.write(batch)
                batch = []
        if batch:
            sink.write(batch)


def timed(action: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = action()
    return result, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--per-block", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        fill(store, args.sessions, args.statements, args.per_block)
        # what IncidentReviews.build reads of a broker's context
        ctx: Any = SimpleNamespace(
            store=store,
            settings=SimpleNamespace(review=ReviewSection(), targets={}),
            clock=lambda: datetime.now(UTC),
        )
        reviews = IncidentReviews(ctx)
        report, build = timed(lambda: reviews.build("INC-1"))
        _, first_html = timed(lambda: render_html(report))  # imports matplotlib
        markdown, md = timed(lambda: render_markdown(report))
        page, html = timed(lambda: render_html(report))
        store.close()
    rows = [
        ("build (store, classes, chains)", f"{build:.2f}", "", ""),
        ("md", f"{md:.2f}", f"{len(markdown) / 1e6:.1f}", ""),
        ("html, first (imports)", f"{first_html:.2f}", "", f"{first_html / TARGET_SECONDS:.2f}"),
        ("html", f"{html:.2f}", f"{len(page) / 1e6:.1f}", f"{html / TARGET_SECONDS:.2f}"),
        (
            "build + html",
            f"{build + html:.2f}",
            "",
            f"{(build + html) / TARGET_SECONDS:.2f}",
        ),
    ]
    count = sum(len(s.statements) for s in report.sessions)
    print(f"{count} statements in {len(report.sessions)} session(s); target {TARGET_SECONDS} s")
    print(table(("step", "seconds", "MB", "ratio"), rows))


if __name__ == "__main__":
    main()
