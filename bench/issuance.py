"""Issuance through the broker at 1, 4 and 8 concurrent clients, next to the raw rate of
the same provisioning SQL run directly against the same PostgreSQL (verifier included).

    python bench/issuance.py [--requests 240] [--clients 1,4,8]

Everything runs locally: a private PostgreSQL, the test identity provider and a real
``dbaccess-broker serve`` process (SQLite store), as in the sandbox. The raw side does what
the broker's engine does per session — compute the SCRAM verifier and call
``dbaccess.create_user`` — on one persistent connection per client thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, table  # noqa: E402

from dbaccess.broker.engines.base import make_password  # noqa: E402
from dbaccess.broker.engines.scram import scram_sha256_verifier  # noqa: E402
from dbaccess.sandbox.idp import device_tokens  # noqa: E402
from dbaccess.sandbox.stack import PROVISIONER, Stack  # noqa: E402


def through_broker(stack: Stack, token: str, clients: int, total: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    local = threading.local()

    def one(_: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=stack.broker_url, timeout=60,
                                      headers={"Authorization": f"Bearer {token}"})
        started = time.perf_counter()
        answer = local.http.post("/v1/sessions", json={
            "target": "demo", "role": "readonly", "duration_seconds": 3600})
        elapsed = time.perf_counter() - started
        if answer.status_code != 201:
            raise RuntimeError(answer.text)
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(total)))
    return total / (time.perf_counter() - started), latencies


def raw(stack: Stack, clients: int, total: int, tag: str) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker(index: int) -> None:
        with stack.postgres.connect("demo", user=PROVISIONER,
                                    password=stack.provisioner_password) as conn:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                username = f"dba_raw{tag}_{n}"
                started = time.perf_counter()
                verifier = scram_sha256_verifier(make_password())  # as the broker does
                conn.execute(
                    "SELECT dbaccess.create_user(%s, %s, %s, %s, %s, %s, %s, %s)",
                    (username, verifier, datetime.now(UTC) + timedelta(hours=1),
                     "dbaccess_readonly", 5, True, 300000, False))
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total / (time.perf_counter() - started), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240, help="sessions per round")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--workers", type=int, default=1, help="broker worker processes")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="dbaccess-bench-") as tmp, \
            Stack(Path(tmp) / "stack", reaper_interval="1m", reconcile_interval="1h",
                  broker_workers=args.workers) as stack:
        token = device_tokens(stack.idp, "alice")["id_token"]
        through_broker(stack, token, 2, 20)  # warm up: JWKS, pools, page cache
        raw(stack, 2, 20, "warm")
        rows = []
        for clients in levels:
            b_rate, b_lat = through_broker(stack, token, clients, args.requests)
            r_rate, r_lat = raw(stack, clients, args.requests, str(clients))
            rows.append([
                clients, f"{b_rate:.0f}", f"{percentile(b_lat, 50) * 1000:.1f}",
                f"{percentile(b_lat, 99) * 1000:.1f}", f"{r_rate:.0f}",
                f"{percentile(r_lat, 50) * 1000:.1f}", f"{b_rate / r_rate:.2f}",
            ])
        print(f"issuance, {args.requests} sessions per round, {args.workers} broker "
              f"worker(s), PostgreSQL "
              f"{stack.postgres.version()}, {time.strftime('%Y-%m-%d')}")
        print(table(["clients", "broker/s", "p50 ms", "p99 ms", "raw/s", "raw p50 ms",
                     "ratio"], rows))


if __name__ == "__main__":
    main()
