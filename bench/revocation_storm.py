"""A revocation storm: N leases expiring at once, revoked by the broker's reaper, next to
the raw drop rate of the same SQL, with the API's latency measured during the storm.

    python bench/revocation_storm.py [--leases 10000] [--raw N]

Set-up (not measured): N session users are created directly with the provisioning
function and N matching leases, already expired, are written to a stopped broker's store.
Then the broker starts, and we time how long it takes to drop them all while a client
calls GET /v1/sessions every 20 ms.

The raw rate drops as many users as the storm, from a catalog of the same size, made the
same way: PostgreSQL's DROP ROLE reads the whole of pg_db_role_setting (DropSetting scans
it; there is one row per role with settings, and every session user has its
statement_timeout, read-only or log_statement there), so a drop costs in proportion to the
session users beside it (on 15, 1,000 drops: 2,607/s beside no other role, 2,203/s beside
20,000 roles without settings, 260/s beside 20,000 with). A raw rate from fewer users, as
this benchmark measured until 100,000 leases compared with 10,000 raw drops (ratio 0.37),
set the broker against an easier job. The catalog is vacuumed before each phase, so the
storm does not scan the raw phase's dead rows either.

"broker revokes/s" (and so ``ratio``) is over the revocation itself: from the audit
record of the first claim to that of the last drop, as the raw rate is over the drops.
"with start-up s" is the wall time from starting the broker process until the last lease
is closed (importing and starting the broker take a second or two). "broker peak RSS" is
the broker process's VmHWM at the end; "broker CPU ms/lease" its CPU time after start-up
(the API probe's included) over the leases: on a machine whose cores it shares with the
database, broker CPU is drops the database does not make.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, percentile, table  # noqa: E402

from dbaccess.broker.store import Store, audit, leases  # noqa: E402
from dbaccess.sandbox.idp import device_tokens  # noqa: E402
from dbaccess.sandbox.stack import PROVISIONER, Stack  # noqa: E402

VERIFIER = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5:c2VydmVya2V5c2VydmVya2V5"
THREADS = 8


def in_parallel(stack: Stack, names: list[str], sql: str, args_for) -> float:  # type: ignore[no-untyped-def]
    """Run ``sql`` once per name on THREADS persistent provisioner connections; rate/s."""
    lock = threading.Lock()
    todo = iter(names)

    def worker() -> None:
        with stack.postgres.connect(
            "demo", user=PROVISIONER, password=stack.provisioner_password
        ) as conn:
            while True:
                with lock:
                    name = next(todo, None)
                if name is None:
                    return
                conn.execute(sql, args_for(name))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(names) / (time.perf_counter() - started)


def create_users(stack: Stack, names: list[str]) -> float:
    until = datetime.now(UTC) + timedelta(hours=2)
    return in_parallel(
        stack,
        names,
        "SELECT dbaccess.create_user(%s, %s, %s, 'dbaccess_readonly', 5, true, NULL, false)",
        lambda n: (n, VERIFIER, until),
    )


def drop_users(stack: Stack, names: list[str]) -> float:
    return in_parallel(stack, names, "SELECT dbaccess.revoke_user(%s)", lambda n: (n,))


def vacuum_role_settings(stack: Stack) -> None:
    """Clear pg_db_role_setting of dropped roles' rows (every DROP ROLE reads them all)."""
    with stack.postgres.connect() as admin:
        admin.execute("VACUUM pg_catalog.pg_db_role_setting")


def peak_rss(pid: int) -> int:
    """The process's peak resident set so far, in KiB (Linux: VmHWM in /proc/PID/status)."""
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument(
        "--raw",
        type=int,
        default=None,
        help="users for the raw drop rate (default: as many as --leases; "
        "fewer is an easier job, see above)",
    )
    args = parser.parse_args()
    if args.raw is None:
        args.raw = args.leases
    with (
        tempfile.TemporaryDirectory(prefix="dbaccess-storm-") as tmp,
        Stack(Path(tmp) / "stack", reaper_interval="1s", reconcile_interval="1h") as stack,
    ):
        token = device_tokens(stack.idp, "alice")["id_token"]
        stack.stop_broker()

        raw_names = [f"dba_raw_{i}" for i in range(args.raw)]
        create_users(stack, raw_names)
        vacuum_role_settings(stack)
        raw_rate = drop_users(stack, raw_names)

        names = [f"dba_storm_{i}" for i in range(args.leases)]
        t0 = time.perf_counter()
        create_users(stack, names)

        expired = datetime.now(UTC) - timedelta(seconds=1)
        store = Store(stack.store_url)
        with store.engine.begin() as conn:
            conn.execute(
                leases.insert(),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "subject": "storm",
                        "target": "demo",
                        "role": "readonly",
                        "engine": "postgres",
                        "db_user": name,
                        "state": "active",
                        "created_at": expired - timedelta(minutes=5),
                        "expires_at": expired,
                        "attempts": 0,
                    }
                    for name in names
                ],
            )
        vacuum_role_settings(stack)  # the raw phase's dead rows: not the storm's to scan
        print(
            f"set-up: {args.leases} users and expired leases in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )

        latencies: list[float] = []
        errors = 0
        stop = threading.Event()

        def probe() -> None:
            nonlocal errors
            with httpx.Client(
                base_url=stack.broker_url, timeout=10, headers={"Authorization": f"Bearer {token}"}
            ) as http:
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        ok = http.get("/v1/sessions").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    latencies.append(time.perf_counter() - started)
                    errors += not ok
                    stop.wait(0.02)

        started = time.perf_counter()
        stack.start_broker()
        cpu_at_start = cpu_seconds(stack.broker_pid)  # after imports and start-up
        prober = threading.Thread(target=probe)
        prober.start()

        def remaining() -> int:
            with store.engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.select(sa.func.count())
                        .select_from(leases)
                        .where(leases.c.subject == "storm", leases.c.state != "revoked")
                    ).scalar_one()
                )

        while remaining():
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        peak_rss_mb = peak_rss(stack.broker_pid) / 1024
        broker_cpu = cpu_seconds(stack.broker_pid) - cpu_at_start
        stop.set()
        prober.join()
        left = stack.managed_users()
        with store.engine.connect() as conn:
            first, last = conn.execute(
                sa.select(sa.func.min(audit.c.at), sa.func.max(audit.c.at)).where(
                    audit.c.subject == "storm",
                    audit.c.event.in_(("session.revoke_requested", "session.revoked")),
                )
            ).one()
        store.close()
        span = (last - first).total_seconds()
        rate = args.leases / span
        print(
            f"revocation storm: {args.leases} leases expiring at once, PostgreSQL "
            f"{stack.postgres.version()}, {time.strftime('%Y-%m-%d')}"
        )
        print(
            table(
                [
                    "leases",
                    "broker revokes/s",
                    "raw drops/s",
                    "ratio",
                    "with start-up s",
                    "API p50 ms",
                    "API p99 ms",
                    "API calls",
                    "API errors",
                    "users left",
                    "broker peak RSS MB",
                    "broker CPU ms/lease",
                ],
                [
                    [
                        args.leases,
                        f"{rate:.0f}",
                        f"{raw_rate:.0f}",
                        f"{rate / raw_rate:.2f}",
                        f"{elapsed:.1f}",
                        f"{percentile(latencies, 50) * 1000:.1f}",
                        f"{percentile(latencies, 99) * 1000:.1f}",
                        len(latencies),
                        errors,
                        len(left),
                        f"{peak_rss_mb:.0f}",
                        f"{broker_cpu * 1000 / args.leases:.2f}",
                    ]
                ],
            )
        )


if __name__ == "__main__":
    main()
