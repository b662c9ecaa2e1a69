"""Reading a long gateway session's statement records page by page, as
``dbaccess audit --statements SESSION --after N`` and ``GET /v1/sessions/{id}/statements``
do: each page is the store's page of records and the chain's verdict.

    python bench/statement_pages.py [--records 100000] [--per-block 10] [--limit 100]
                                    [--store URL] [--sample 10]

Set-up (not measured): one session of ``--records`` records, written by the gateway's
StoreSink ``--per-block`` records a batch (a block each), into a fresh SQLite store (or
the empty store ``--store`` names). Then the whole session is read ``--limit`` records a
page, oldest first.

"walk every page" is how pages were verified before migration 0007: the whole chain
walked (every block hashed from the first) on each page, O(n^2) over a listing; its
listing time is ``--sample`` pages timed, spread over the session, times the number of
pages. "continue the walk" is ``page_verdict``: the first page walks the chain, later
ones hash only the blocks written since (none here), O(n) over a listing; all pages are
timed. ``ratio`` is the first's listing time over the second's. On a shared 2-core
machine (blocks of 10, pages of 100): SQLite 563 s against 12.8 s (ratio 44), a local
PostgreSQL 15 store 574 s against 10.5 s (ratio 55).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table  # noqa: E402
from dbaccess.broker.store import Store  # noqa: E402
from dbaccess.gateway.records import StatementRecord  # noqa: E402
from dbaccess.gateway.store_sink import StoreSink  # noqa: E402


def fill(store: Store, records: int, per_block: int) -> str:
    now = datetime.now(UTC)
    lease = store.open_lease(
        now=now, subject="alice", email=None, target="demo", role="readonly",
        engine="postgres", db_user=f"dba_{uuid.uuid4().hex[:10]}", rule="dev",
        reason="bench", ticket=None, expires_at=now + timedelta(hours=1), source="127.0.0.1",
    )  # fmt: skip
    lease = store.activate(lease, now)
    sink = StoreSink(store, "gw-bench")
    for first in range(1, records + 1, per_block):
        sink.write(
            [
                StatementRecord(
                    lease_id=lease.id,
                    person="alice",
                    target="demo",
                    role="readonly",
                    kind="query",
                    sql=f"SELECT * FROM orders WHERE id = {n}",
                    params_policy="none",
                    params=None,
                    started=now,
                    duration=0.0004,
                    rows=1,
                    bytes_out=120,
                    bytes_in=0,
                    sqlstate=None,
                    status="completed",
                    connection=1,
                )  # fmt: skip
                for n in range(first, min(first + per_block, records + 1))
            ]
        )
    return lease.id


def read_page(store: Store, lease_id: str, after: int, limit: int, walk: bool) -> int | None:
    page, more = store.statement_page(lease_id, after=after, limit=limit)
    verdict = (
        store.verify_statements(lease_id) if walk else store.page_verdict(lease_id, after=after)
    )
    assert verdict.ok and page, verdict
    return more


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-block", type=int, default=10)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--store", help="an empty store's URL (default: a new SQLite file)")
    parser.add_argument("--sample", type=int, default=10, help="pages timed when walking each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.store or f"sqlite:///{Path(tmp) / 'store.db'}")
        started = time.perf_counter()
        lease_id = fill(store, args.records, args.per_block)
        print(
            f"{args.records} records in blocks of {args.per_block}, written in "
            f"{time.perf_counter() - started:.1f} s; pages of {args.limit}",
            file=sys.stderr,
        )
        pages = -(-args.records // args.limit)

        started, after, read = time.perf_counter(), 0, 0
        more: int | None = 0
        while more is not None:
            more = read_page(store, lease_id, after, args.limit, walk=False)
            after, read = more or after, read + 1
        continued = time.perf_counter() - started
        assert read == pages

        step = max(1, pages // args.sample)
        sampled = [i * args.limit for i in range(0, pages, step)][: args.sample]
        started = time.perf_counter()
        for after in sampled:
            read_page(store, lease_id, after, args.limit, walk=True)
        walked = (time.perf_counter() - started) / len(sampled) * pages
        store.close()
    rows = [
        ["walk every page", pages, f"{walked / pages * 1e3:.2f}", f"{walked:.1f}"],
        ["continue the walk", pages, f"{continued / pages * 1e3:.2f}", f"{continued:.2f}"],
    ]
    print(table(["verification", "pages", "ms/page", "listing s"], rows))
    print(f"ratio {walked / continued:.0f}")


if __name__ == "__main__":
    main()
