"""One target stopped (SIGSTOP) for a minute: the revocation lag on a healthy target,
the time calls naming the stopped one take, and what happens when it returns.

    python bench/target_outage.py [--freeze 60] [--every 2] [--burst 20]

Set-up: the sandbox stack (healthy PostgreSQL target "demo") plus a second PostgreSQL
target "frozen". Sessions are opened on both; then every process of "frozen" is stopped
for ``--freeze`` seconds while sessions on "demo" expire every ``--every`` seconds. Each
lag is the time from a session's expiry to its user's disappearance from pg_roles, polled
every 50 ms. Once the first call naming the stopped target has failed, ``--burst``
session requests on it are sent at once: how many are refused (503 target_unreachable)
and how fast. After SIGCONT: how soon the stopped target's expired users are gone and how
many session requests on it fail.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, percentile, table  # noqa: E402

from dbaccess.sandbox.idp import device_tokens  # noqa: E402
from dbaccess.sandbox.outage import add_postgres_target, frozen  # noqa: E402
from dbaccess.sandbox.postgres import PostgresServer  # noqa: E402
from dbaccess.sandbox.stack import Stack  # noqa: E402


def users_on(server: PostgresServer) -> set[str]:
    with server.connect() as admin:
        rows = admin.execute("SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'dba_')")
        return {str(row[0]) for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze", type=float, default=60.0)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--burst", type=int, default=20)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="dbaccess-outage-") as tmp,
        Stack(Path(tmp) / "stack", reaper_interval="1s", reconcile_interval="1h") as stack,
    ):
        stack.stop_broker()
        server = add_postgres_target(stack, "frozen", Path(tmp) / "frozen")
        try:
            stack.start_broker()
            http = httpx.Client(
                base_url=stack.broker_url,
                timeout=120,
                headers={
                    "Authorization": "Bearer " + device_tokens(stack.idp, "alice")["id_token"]
                },
            )

            def session(target: str, seconds: int) -> httpx.Response:
                return http.post(
                    "/v1/sessions",
                    json={"target": target, "role": "readonly", "duration_seconds": seconds},
                )

            stuck = [session("frozen", 3).json() for _ in range(5)]
            renewable = session("frozen", 600).json()
            expiring = int(args.freeze) - 5
            healthy = {
                r["db_user"]: datetime.fromisoformat(r["expires_at"]).timestamp()
                for r in (
                    session("demo", s).json() for s in range(args.every, expiring, args.every)
                )
            }
            calls: list[tuple[str, int, float]] = []
            failed_once = threading.Event()

            def call(what: str, method: str, path: str, body: object = None) -> None:
                started = time.monotonic()
                status = http.request(method, path, json=body).status_code
                calls.append((what, status, time.monotonic() - started))
                if what == "create":
                    failed_once.set()

            burst: list[tuple[int, float]] = []

            def burst_call() -> None:
                started = time.monotonic()
                status = http.post(
                    "/v1/sessions", json={"target": "frozen", "role": "readonly"}
                ).status_code
                burst.append((status, time.monotonic() - started))

            def send_burst() -> None:
                if not failed_once.wait(args.freeze):
                    return
                senders = [threading.Thread(target=burst_call) for _ in range(args.burst)]
                for sender in senders:
                    sender.start()
                for sender in senders:
                    sender.join()

            lags: list[float] = []
            with frozen(server):
                frozen_at = time.monotonic()
                callers = [
                    threading.Thread(
                        target=call,
                        args=(
                            "create",
                            "POST",
                            "/v1/sessions",
                            {"target": "frozen", "role": "readonly"},
                        ),
                    ),
                    threading.Thread(
                        target=call, args=("revoke", "DELETE", f"/v1/sessions/{stuck[0]['id']}")
                    ),
                    threading.Thread(
                        target=call,
                        args=(
                            "renew",
                            "POST",
                            f"/v1/sessions/{renewable['id']}/renew",
                            {"duration_seconds": 1800},
                        ),
                    ),
                    threading.Thread(target=send_burst),
                ]
                for caller in callers:
                    caller.start()
                pending = dict(healthy)
                while time.monotonic() - frozen_at < args.freeze:
                    if pending:
                        present = users_on(stack.postgres)
                        for user in [u for u in pending if u not in present]:
                            lags.append(time.time() - pending.pop(user))
                    time.sleep(0.05)
                for caller in callers:
                    caller.join()
            returned = time.monotonic()
            left = {r["db_user"] for r in stuck}
            while left & users_on(server) and time.monotonic() - returned < 60:
                time.sleep(0.05)
            drained = time.monotonic() - returned
            statuses = [session("frozen", 60).status_code for _ in range(20)]
        finally:
            stack.stop_broker()
            server.stop()
    print(
        f"target outage: one PostgreSQL target stopped (SIGSTOP) for {args.freeze:.0f} s, "
        f"another healthy, {time.strftime('%Y-%m-%d')}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        table(
            ["healthy sessions expired", "dropped", "lag p50 s", "lag max s"],
            [[len(healthy), len(lags), f"{median(lags):.2f}", f"{max(lags, default=0):.2f}"]],
        )
    )
    print()
    print(
        table(
            ["call naming the stopped target", "status", "seconds"],
            [[what, status, f"{took:.1f}"] for what, status, took in sorted(calls)],
        )
    )
    print()
    refused = [took for status, took in burst if status == 503]
    others = sorted((status, took) for status, took in burst if status != 503)
    print(
        table(
            [f"burst of {args.burst} session requests on it", "value"],
            [
                ["refused at once (503 target_unreachable)", f"{len(refused)} of {len(burst)}"],
                ["refused within 0.2 s", f"{sum(took <= 0.2 for took in refused)} of {len(burst)}"],
                [
                    "median / slowest refusal (s)",
                    f"{median(refused) if refused else 0:.2f} / {max(refused, default=0):.2f}",
                ],
                [
                    "the others (status, s)",
                    ", ".join(f"{status} {took:.1f}" for status, took in others) or "-",
                ],
            ],
        )
    )
    print()
    print(
        table(
            ["after SIGCONT", "value"],
            [
                ["its expired users gone after (s)", f"{drained:.1f}"],
                [
                    "session requests on it that failed",
                    f"{sum(s != 201 for s in statuses)} of {len(statuses)}",
                ],
                ["p99 of the lags (s)", f"{percentile(lags, 99):.2f}"],
            ],
        )
    )


if __name__ == "__main__":
    main()
