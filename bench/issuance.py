"""Issuance through the broker at 1, 4 and 8 concurrent clients, next to the raw rate of
the same provisioning SQL run directly against the same PostgreSQL (verifier included).

    python bench/issuance.py [--requests 240] [--clients 1,4,8] [--pairs 5]

Everything runs locally: a private PostgreSQL, the test identity provider and a real
``dbaccess-broker serve`` process (SQLite store), as in the sandbox. The raw side does what
the broker's engine does per session — compute the SCRAM verifier and call
``dbaccess.create_user`` — on one persistent connection per client thread.

Each level runs ``--pairs`` pairs of rounds, a broker round and a raw round back to back,
in alternating order (so neither side always runs on the warmer or the more crowded
catalog); a pair gives one ratio, and the table shows the median pair — on a small shared
machine one round's rate can swing by a third. Rates are medians over the rounds,
latencies are over all of them; the spread of the ratios is printed below the table.

Next to the rates it prints the CPU each side spends per session (broker process,
PostgreSQL, this benchmark's own client code): on a machine where all three share the
cores, the ratio cannot exceed raw CPU / (raw CPU + the broker's and its client's CPU).
The raw side's PostgreSQL figure is its backends' own; the broker side's is every
PostgreSQL process's (background writers included), so it reads a little high.

Both sides get the same number of concurrent clients. The raw side sends all of them to
the database at once, as that many direct clients would. The broker admits at most its
target's ``create_concurrency`` (4) creations at a time and queues the rest; at 8 clients
that is part of what is measured (without it the median ratio here was ~0.78, not ~0.82).

Last, the store's own part of an issuance (the lease, then its activation: two commits,
as the broker makes them) is timed with the SQLite store's ``synchronous=FULL`` next to
``NORMAL``, in alternating rounds on the disk the broker's store used: what durability
costs per session (``--store-sessions``, 0 to skip). FULL syncs the WAL at each commit, so
its cost is the disk's fsync latency; on tmpfs it would be nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_of, cpu_seconds, median, percentile, table  # noqa: E402

from dbaccess.broker.engines.base import make_password  # noqa: E402
from dbaccess.broker.engines.postgres.scram import scram_sha256_verifier  # noqa: E402
from dbaccess.broker.store import Store  # noqa: E402
from dbaccess.sandbox.idp import device_tokens  # noqa: E402
from dbaccess.sandbox.stack import PROVISIONER, Stack  # noqa: E402

# One person asks for thousands of sessions here, which the caps exist to stop; raised so
# far that only the issuance path is measured (the count of live leases included).
UNCAPPED = {
    "sessions_per_person": 10_000,
    "connections_per_person": 100_000,
    "sessions_per_target": 100_000,
    "connections_per_target": 100_000,
}


def through_broker(stack: Stack, token: str, clients: int, total: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    url = urlsplit(stack.broker_url)
    body = json.dumps({"target": "demo", "role": "readonly", "duration_seconds": 3600})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def one(_: int) -> None:
        # A keep-alive connection per client thread, as the raw side keeps one PostgreSQL
        # connection per thread; http.client because this load generator shares the cores
        # with the broker, and httpx would spend ~2 ms more CPU per request of its own.
        if not hasattr(local, "http"):
            local.http = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
        started = time.perf_counter()
        local.http.request("POST", "/v1/sessions", body=body, headers=headers)
        answer = local.http.getresponse()
        text = answer.read()
        elapsed = time.perf_counter() - started
        if answer.status != 201:
            raise RuntimeError(text.decode())
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    return total / (time.perf_counter() - started), latencies


def raw(stack: Stack, clients: int, total: int, tag: str) -> tuple[float, list[float], float]:
    """Rate, latencies and the CPU seconds PostgreSQL's backends spent on them."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))
    backend_cpu: list[float] = []

    def worker(index: int) -> None:
        with stack.postgres.connect(
            "demo", user=PROVISIONER, password=stack.provisioner_password
        ) as conn:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    # read before the connection closes and its backend's account is gone
                    with lock:
                        backend_cpu.append(cpu_seconds(conn.info.backend_pid))
                    return
                username = f"dba_raw{tag}_{n}"
                started = time.perf_counter()
                verifier = scram_sha256_verifier(make_password())  # as the broker does
                conn.execute(
                    "SELECT dbaccess.create_user(%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        username,
                        verifier,
                        datetime.now(UTC) + timedelta(hours=1),
                        "dbaccess_readonly",
                        5,
                        True,
                        300000,
                        False,
                    ),
                )
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total / (time.perf_counter() - started), latencies, sum(backend_cpu)


def store_commits(directory: Path, sessions: int, rounds: int) -> list[list[object]]:
    """Per session, the store's lease + activation with synchronous NORMAL and FULL."""
    took: dict[str, list[float]] = {"NORMAL": [], "FULL": []}
    now = datetime.now(UTC)
    for turn in range(rounds):
        for mode in ("NORMAL", "FULL") if turn % 2 == 0 else ("FULL", "NORMAL"):
            store = Store(f"sqlite:///{directory / f'sync-{mode}-{turn}.db'}")
            try:
                store.probe(now)  # opens the writer's connection, which keeps the setting
                assert store._writer is not None
                driver = store._writer.connection.driver_connection
                driver.execute(f"PRAGMA synchronous={mode}")  # type: ignore[union-attr]
                for n in range(sessions):
                    started = time.perf_counter()
                    lease = store.open_lease(
                        now=now,
                        subject="alice",
                        email=None,
                        target="demo",
                        role="readonly",
                        engine="postgres",
                        db_user=f"dba_sync_{n}",
                        rule="bench",
                        reason=None,
                        ticket=None,
                        expires_at=now + timedelta(hours=1),
                        source=None,
                    )
                    store.activate(lease, now)
                    took[mode].append(time.perf_counter() - started)
            finally:
                store.close()
    return [
        [mode, f"{percentile(v, 50) * 1000:.2f}", f"{percentile(v, 99) * 1000:.2f}", len(v)]
        for mode, v in took.items()
    ]


class Tally:
    """One side's rounds at one level: rates, all latencies, CPU seconds per column."""

    def __init__(self, columns: int) -> None:
        self.rates: list[float] = []
        self.latencies: list[float] = []
        self.cpu = [0.0] * columns

    def add(self, rate: float, latencies: list[float], cpu: list[float]) -> None:
        self.rates.append(rate)
        self.latencies.extend(latencies)
        self.cpu = [total + more for total, more in zip(self.cpu, cpu, strict=True)]


def broker_round(
    tally: Tally, meters: list[Callable[[], float]], stack: Stack, token: str, clients: int, n: int
) -> None:
    before = [meter() for meter in meters]
    rate, latencies = through_broker(stack, token, clients, n)
    tally.add(rate, latencies, [meter() - b for meter, b in zip(meters, before, strict=True)])


def raw_round(tally: Tally, me: int, stack: Stack, clients: int, n: int, tag: str) -> None:
    mine = cpu_seconds(me)
    rate, latencies, backends = raw(stack, clients, n, tag)
    tally.add(rate, latencies, [backends, cpu_seconds(me) - mine])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240, help="sessions per round")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--workers", type=int, default=1, help="broker worker processes")
    parser.add_argument(
        "--pairs", type=int, default=5, help="broker/raw round pairs per level (median reported)"
    )
    parser.add_argument(
        "--store-sessions",
        type=int,
        default=300,
        help="sessions per round of the store's sync cost (0: skip)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="dbaccess-bench-") as tmp,
        Stack(
            Path(tmp) / "stack",
            reaper_interval="1m",
            reconcile_interval="1h",
            broker_workers=args.workers,
            limits=UNCAPPED,
        ) as stack,
    ):
        token = device_tokens(stack.idp, "alice")["id_token"]
        through_broker(stack, token, 2, 20)  # warm up: JWKS, pools, page cache
        raw(stack, 2, 20, "warm")
        rows, cpu_rows = [], []
        assert stack._broker is not None
        broker_pid = stack._broker.pid

        def broker_cpu() -> float:  # the broker and its worker processes
            return cpu_of(lambda _, pid: pid == broker_pid or _parent(pid) == broker_pid)

        def postgres_cpu() -> float:
            return cpu_of(lambda command, _: command.startswith("postgres"))

        me = os.getpid()
        n = args.requests
        spreads = []
        meters = [broker_cpu, postgres_cpu, lambda: cpu_seconds(me)]
        for clients in levels:
            broker, direct, ratios = Tally(3), Tally(2), []
            for pair in range(args.pairs):
                for side in ("broker", "raw") if pair % 2 == 0 else ("raw", "broker"):
                    if side == "broker":
                        broker_round(broker, meters, stack, token, clients, n)
                    else:
                        raw_round(direct, me, stack, clients, n, f"{clients}_{pair}")
                ratios.append(broker.rates[-1] / direct.rates[-1])
            sessions = n * args.pairs
            rows.append(
                [
                    clients,
                    f"{median(broker.rates):.0f}",
                    f"{percentile(broker.latencies, 50) * 1000:.1f}",
                    f"{percentile(broker.latencies, 99) * 1000:.1f}",
                    f"{median(direct.rates):.0f}",
                    f"{percentile(direct.latencies, 50) * 1000:.1f}",
                    f"{median(ratios):.2f}",
                ]
            )
            spreads.append(f"{clients}: " + ", ".join(f"{r:.2f}" for r in ratios))
            cpu_rows.append(
                [clients] + [f"{c / sessions * 1000:.2f}" for c in broker.cpu + direct.cpu]
            )
        print(
            f"issuance, {args.requests} sessions per round, {args.pairs} pair(s) of rounds "
            f"per level, {args.workers} broker worker(s), PostgreSQL "
            f"{stack.postgres.version()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
        )
        print(
            table(["clients", "broker/s", "p50 ms", "p99 ms", "raw/s", "raw p50 ms", "ratio"], rows)
        )
        print("\nratio of each pair of rounds, by clients: " + "; ".join(spreads))
        print("\nCPU ms per session (all on the same cores)")
        print(
            table(
                ["clients", "broker", "postgres", "bench client", "raw: postgres", "raw: client"],
                cpu_rows,
            )
        )
        if args.store_sessions:
            print(
                "\nthe store's lease + activation (two commits) per session, SQLite "
                "synchronous NORMAL vs FULL (the broker's), alternating rounds"
            )
            print(
                table(
                    ["synchronous", "p50 ms", "p99 ms", "sessions"],
                    store_commits(stack.broker_config.parent, args.store_sessions, 4),
                )
            )


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


if __name__ == "__main__":
    main()
