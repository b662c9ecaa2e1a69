"""Issuance through the broker at 1, 4 and 8 concurrent clients, next to the raw rate of
the same provisioning SQL run directly against the same PostgreSQL (verifier included).

    python bench/issuance.py [--requests 240] [--clients 1,4,8]

Everything runs locally: a private PostgreSQL, the test identity provider and a real
``dbaccess-broker serve`` process (SQLite store), as in the sandbox. The raw side does what
the broker's engine does per session — compute the SCRAM verifier and call
``dbaccess.create_user`` — on one persistent connection per client thread.

Next to the rates it prints the CPU each side spends per session (broker process,
PostgreSQL, this benchmark's own client code): on a machine where all three share the
cores, the ratio cannot exceed raw CPU / (raw CPU + the broker's and its client's CPU).
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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_of, cpu_seconds, percentile, table  # noqa: E402

from dbaccess.broker.engines.base import make_password  # noqa: E402
from dbaccess.broker.engines.scram import scram_sha256_verifier  # noqa: E402
from dbaccess.sandbox.idp import device_tokens  # noqa: E402
from dbaccess.sandbox.stack import PROVISIONER, Stack  # noqa: E402


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
        with stack.postgres.connect("demo", user=PROVISIONER,
                                    password=stack.provisioner_password) as conn:
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
    return total / (time.perf_counter() - started), latencies, sum(backend_cpu)


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
        rows, cpu_rows = [], []
        assert stack._broker is not None
        broker_pid = stack._broker.pid

        def broker_cpu() -> float:  # the broker and its worker processes
            return cpu_of(lambda _, pid: pid == broker_pid or _parent(pid) == broker_pid)

        def postgres_cpu() -> float:
            return cpu_of(lambda command, _: command.startswith("postgres"))

        me = os.getpid()
        n = args.requests
        for clients in levels:
            before = (broker_cpu(), postgres_cpu(), cpu_seconds(me))
            b_rate, b_lat = through_broker(stack, token, clients, n)
            b_cpu = [(a - b) / n * 1000 for a, b in
                     zip((broker_cpu(), postgres_cpu(), cpu_seconds(me)), before, strict=True)]
            mine = cpu_seconds(me)
            r_rate, r_lat, r_pg = raw(stack, clients, n, str(clients))
            r_client = (cpu_seconds(me) - mine) / n * 1000
            rows.append([
                clients, f"{b_rate:.0f}", f"{percentile(b_lat, 50) * 1000:.1f}",
                f"{percentile(b_lat, 99) * 1000:.1f}", f"{r_rate:.0f}",
                f"{percentile(r_lat, 50) * 1000:.1f}", f"{b_rate / r_rate:.2f}",
            ])
            cpu_rows.append([
                clients, f"{b_cpu[0]:.2f}", f"{b_cpu[1]:.2f}", f"{b_cpu[2]:.2f}",
                f"{r_pg / n * 1000:.2f}", f"{r_client:.2f}",
            ])
        print(f"issuance, {args.requests} sessions per round, {args.workers} broker "
              f"worker(s), PostgreSQL "
              f"{stack.postgres.version()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
        print(table(["clients", "broker/s", "p50 ms", "p99 ms", "raw/s", "raw p50 ms",
                     "ratio"], rows))
        print("\nCPU ms per session (all on the same cores)")
        print(table(["clients", "broker", "postgres", "bench client", "raw: postgres",
                     "raw: client"], cpu_rows))


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


if __name__ == "__main__":
    main()
