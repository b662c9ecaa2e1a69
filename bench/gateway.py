"""The gateway's speed (issue 14, point 7): ``pgbench -S`` at 1 and 8 clients straight to
PostgreSQL, through PgBouncer (session mode), through a bare byte pipe on the gateway's event
loop (the floor under any relay in this runtime) and through the gateway with auditing on; the
gateway's CPU per transaction and its share above the pipe's; p50 latency per statement at
1 client; a 1M-row SELECT and a COPY out through the gateway against direct.

    python bench/gateway.py [--seconds 10] [--rounds 3] [--scale 10] [--store URL | --no-store]
                            [--upstream socket|tcp] [--python-only]

All on this box: a private PostgreSQL (dbaccess.sandbox.postgres), PgBouncer and pgbench
from the Debian packages (``apt-get install pgbouncer postgresql-client``), and the gateway
in a process of its own (bench/gateway_server.py: uvloop if installed, a MemoryDirectory,
every statement a record written in batches to a store, a SQLite file in the run's
directory unless --store names another, as the gateway command writes them; --no-store
only counts them, to tell the relay's cost from the store's). The three relays reach
PostgreSQL the same way: by its Unix socket (the default, as each runs deployed next to the
database: ``gateway_socket``, PgBouncer's ``host=/dir``), or with ``--upstream tcp`` over
127.0.0.1; pgbench reaches each relay, and PostgreSQL direct, over TCP. The gateway reads
its frequent chunks with its compiled reader when built (fastwire.py); --python-only runs it
without (DBACCESS_GATEWAY_PYTHON=1), to compare. The paths take
turns within each round, in an order that alternates between rounds; figures are medians
of the rounds, ratios the medians of each round's ratio. pgbench uses the simple protocol
and one connection per client for the whole run (no -C), so the figures are the relay's,
not the log-in's. The big results are read by psql into /dev/null.

Targets: gateway >= 0.8 x PgBouncer tps at 8 clients, <= 25 us gateway CPU per
transaction, <= +0.05 ms p50 at 1 client, 1M rows <= 1.5 x direct. The last line is
``gateway/pgbouncer at 8 clients: R``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, median, percentile, table  # noqa: E402

from dbaccess.sandbox.postgres import PostgresServer  # noqa: E402
from dbaccess.sandbox.processes import (  # noqa: E402
    end_process,
    free_port,
    hand_over,
    service_user,
    wait_until,
)

HERE = Path(__file__).resolve().parent
# "pipe": a bare Protocol byte pipe on the same event loop (bench/pipe_server.py), the
# floor under any relay in this runtime, so the gateway's own share can be told apart
PATHS = ("direct", "pgbouncer", "pipe", "gateway")
BENCH_USER = "bench"


def find(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/lib/postgresql/15/bin")


class Endpoint:
    def __init__(self, name: str, port: int, user: str, password: str) -> None:
        self.name, self.port, self.user, self.password = name, port, user, password

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": "postgres",
            "PGPASSWORD": self.password,  # environment, never argv
            "PGSSLMODE": "disable",
        }


def start_pgbouncer(
    binary: str, workdir: Path, pg_port: int, password: str, socket_dir: Path | None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "userlist.txt").write_text(f'"{BENCH_USER}" "{password}"\n')
    os.chmod(workdir / "userlist.txt", 0o600)
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"postgres = host={socket_dir or '127.0.0.1'} port={pg_port} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {workdir / 'userlist.txt'}\n"
        "pool_mode = session\nmax_client_conn = 100\ndefault_pool_size = 20\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    user = service_user("postgres")  # pgbouncer refuses to run as root
    hand_over(workdir, user)
    process = subprocess.Popen(
        [binary, str(workdir / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        **({"user": user, "group": user} if user else {}),
    )
    wait_until(lambda: port_open(port), timeout=20, what="PgBouncer")
    return process, port


def port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def start_gateway(
    pg_port: int,
    password: str,
    store: str | None = None,
    socket: Path | None = None,
    python_only: bool = False,
) -> tuple[subprocess.Popen[str], Endpoint]:
    user, secret = "bench_gw", secrets.token_urlsafe(24)
    process = subprocess.Popen(
        [sys.executable, str(HERE / "gateway_server.py")],
        env={**os.environ, "DBACCESS_GATEWAY_PYTHON": "1" if python_only else "0"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    settings = {
        "upstream": {
            "host": "127.0.0.1",
            "port": pg_port,
            "database": "postgres",
            "user": BENCH_USER,
            "password": password,
            "socket": None if socket is None else str(socket),
            "socket_owner": None if socket is None else socket.stat().st_uid,
        },
        "user": user,
        "secret": secret,
        "store": store,
    }
    process.stdin.write(json.dumps(settings) + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    match = re.match(r"port (\d+)", line)
    if not match:
        raise SystemExit(f"the gateway did not start: {line!r}")
    return process, Endpoint("gateway", int(match.group(1)), user, secret)


def start_pipe(
    pg_port: int, password: str, socket: Path | None = None
) -> tuple[subprocess.Popen[str], Endpoint]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "pipe_server.py"), str(socket or pg_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.match(r"port (\d+)", line)
    if not match:
        raise SystemExit(f"the pipe did not start: {line!r}")
    return process, Endpoint("pipe", int(match.group(1)), BENCH_USER, password)


def pgbench(
    binary: str, endpoint: Endpoint, clients: int, seconds: int, logdir: Path
) -> tuple[float, int, list[float]]:
    """tps, transactions, and (at 1 client) each transaction's latency in ms."""
    for old in logdir.glob("pgbench_log*"):
        old.unlink()
    argv = [binary, "-n", "-S", "-c", str(clients), "-j", str(clients), "-T", str(seconds)]
    if clients == 1:
        argv += ["-l", "--log-prefix", str(logdir / "pgbench_log")]
    run = subprocess.run(argv, env=endpoint.env(), capture_output=True, text=True, cwd=logdir)
    if run.returncode != 0:
        raise SystemExit(f"pgbench via {endpoint.name} failed:\n{run.stderr}")
    tps = float(re.search(r"tps = ([\d.]+) \(without", run.stdout).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"actually processed: (\d+)", run.stdout).group(1))  # type: ignore[union-attr]
    latencies: list[float] = []
    for log in logdir.glob("pgbench_log*"):
        for line in log.read_text().splitlines():
            latencies.append(int(line.split()[2]) / 1000)  # µs -> ms
    return tps, done, latencies


def timed_psql(endpoint: Endpoint, sql: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["psql", "-X", "-At", "-c", sql],
        env=endpoint.env(),
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="each pgbench run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale: 10 is 1M rows")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the store the records go to, as the gateway process writes them (default: a "
        "SQLite store in the run's temporary directory)",
    )
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="records counted, not stored: the relay's cost without the store's",
    )
    parser.add_argument(
        "--upstream",
        choices=("socket", "tcp"),
        default="socket",
        help="how the relays reach PostgreSQL: its Unix socket (default) or 127.0.0.1",
    )
    parser.add_argument(
        "--python-only",
        action="store_true",
        help="the gateway without its compiled reader (DBACCESS_GATEWAY_PYTHON=1)",
    )
    args = parser.parse_args()
    pgbench_bin, pgbouncer_bin = find("pgbench"), find("pgbouncer")
    missing = [n for n, b in (("pgbench", pgbench_bin), ("pgbouncer", pgbouncer_bin)) if not b]
    if missing:
        raise SystemExit(
            f"bench/gateway.py needs {' and '.join(missing)}: apt-get install -y "
            + " ".join(
                {"pgbench": "postgresql-client", "pgbouncer": "pgbouncer"}[n] for n in missing
            )
        )
    assert pgbench_bin is not None and pgbouncer_bin is not None
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        postgres = PostgresServer(work / "pg")
        if args.upstream == "socket":
            postgres.socket_dir = work / "pg-socket"
        postgres.start()
        socket = postgres.socket_path if args.upstream == "socket" else None
        bouncer: subprocess.Popen[bytes] | None = None
        gateway: subprocess.Popen[str] | None = None
        pipe: subprocess.Popen[str] | None = None
        try:
            password = secrets.token_urlsafe(24)
            with postgres.connect() as admin:
                admin.execute(f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{password}'")
                admin.execute(f"GRANT CREATE ON SCHEMA public TO {BENCH_USER}")
            direct = Endpoint("direct", postgres.port, BENCH_USER, password)
            print(f"pgbench -i -s {args.scale} ...", flush=True)
            subprocess.run(
                [pgbench_bin, "-i", "-q", "-s", str(args.scale)],
                env=direct.env(),
                check=True,
                capture_output=True,
            )
            bouncer, bouncer_port = start_pgbouncer(
                pgbouncer_bin, work / "pgbouncer", postgres.port, password, postgres.socket_dir
            )
            store = None if args.no_store else args.store or f"sqlite:///{Path(tmp) / 'store.db'}"
            gateway, via_gateway = start_gateway(
                postgres.port, password, store, socket, args.python_only
            )
            pipe, via_pipe = start_pipe(postgres.port, password, socket)
            endpoints = {
                "direct": direct,
                "pipe": via_pipe,
                "pgbouncer": Endpoint("pgbouncer", bouncer_port, BENCH_USER, password),
                "gateway": via_gateway,
            }
            logdir = work / "logs"
            logdir.mkdir()
            tps: dict[tuple[str, int], list[float]] = {}
            p50: dict[str, list[float]] = {}
            cpu_us: dict[tuple[str, int], list[float]] = {}  # process CPU (user + system)
            ratio8: list[float] = []
            ratio1: list[float] = []
            for round_ in range(args.rounds):
                order = PATHS if round_ % 2 == 0 else tuple(reversed(PATHS))
                this: dict[tuple[str, int], float] = {}
                for clients in (1, 8):
                    for name in order:
                        pid = {
                            "gateway": gateway.pid,
                            "pgbouncer": bouncer.pid,
                            "pipe": pipe.pid,
                        }.get(name)
                        before = cpu_seconds(pid) if pid else 0.0
                        got, done, latencies = pgbench(
                            pgbench_bin, endpoints[name], clients, args.seconds, logdir
                        )
                        if pid:
                            cpu = cpu_seconds(pid) - before
                            cpu_us.setdefault((name, clients), []).append(cpu / done * 1e6)
                        this[name, clients] = got
                        tps.setdefault((name, clients), []).append(got)
                        if clients == 1:
                            p50.setdefault(name, []).append(percentile(latencies, 50))
                        print(f"round {round_ + 1}: {name:9} {clients} clients {got:9.0f} tps")
                ratio8.append(this["gateway", 8] / this["pgbouncer", 8])
                ratio1.append(this["gateway", 1] / this["pgbouncer", 1])
            big: dict[tuple[str, str], list[float]] = {}
            statements = {
                "SELECT 1M rows": "SELECT * FROM pgbench_accounts",
                "COPY out 1M rows": "COPY pgbench_accounts TO STDOUT",
            }
            for round_ in range(args.rounds):
                order = ("direct", "gateway") if round_ % 2 == 0 else ("gateway", "direct")
                for what, sql in statements.items():
                    for name in order:
                        big.setdefault((what, name), []).append(timed_psql(endpoints[name], sql))
        finally:
            if gateway is not None:
                assert gateway.stdin is not None
                gateway.stdin.close()
                records = gateway.stdout.read() if gateway.stdout else ""
                gateway.wait(20)
                print(f"gateway audit: {records.strip()}")
            if pipe is not None:
                assert pipe.stdin is not None
                pipe.stdin.close()
                pipe.wait(20)
            if bouncer is not None:
                end_process(bouncer)
            postgres.stop()
    print()
    from dbaccess.gateway.postgres import fastwire

    reader = "compiled" if fastwire.BUILT and not args.python_only else "Python"
    print(
        f"pgbench -S, {args.seconds} s runs, {args.rounds} rounds (medians); the relays reach"
        f" PostgreSQL by {'its Unix socket' if args.upstream == 'socket' else 'TCP'}; the"
        f" gateway's frequent chunks read by its {reader} reader"
    )
    rows = []
    for name in PATHS:
        rows.append(
            [
                name,
                f"{median(tps[name, 1]):.0f}",
                f"{median(tps[name, 8]):.0f}",
                f"{median(p50[name]):.3f}",
                f"{median(cpu_us[name, 1]):.1f}" if (name, 1) in cpu_us else "",
                f"{median(cpu_us[name, 8]):.1f}" if (name, 8) in cpu_us else "",
            ]
        )
    print(
        table(
            ["path", "tps 1 client", "tps 8 clients", "p50 ms 1 client", "CPU us/txn 1", "8"],
            rows,
        )
    )
    print()
    print("big results through psql (s, medians)")
    big_rows = []
    for what in statements:
        d, g = median(big[what, "direct"]), median(big[what, "gateway"])
        big_rows.append([what, f"{d:.2f}", f"{g:.2f}", f"{g / d:.2f}"])
    print(table(["", "direct", "gateway", "gateway/direct"], big_rows))
    print()
    added = median(p50["gateway"]) - median(p50["direct"])
    to_direct = median(tps["gateway", 8]) / median(tps["direct", 8])
    print(f"gateway/direct tps at 8 clients: {to_direct:.2f}")
    print(f"gateway/pgbouncer at 1 client: {median(ratio1):.2f}")
    print(f"gateway p50 added at 1 client: {added:+.3f} ms (target <= +0.05)")
    print(
        f"gateway CPU per transaction at 8 clients: {median(cpu_us['gateway', 8]):.1f} us"
        f" (target <= 25; PgBouncer's {median(cpu_us['pgbouncer', 8]):.1f} us)"
    )
    floor = median(cpu_us["pipe", 8])
    print(
        f"bare byte pipe on the same event loop: {floor:.1f} us per transaction at 8 clients;"
        f" the gateway's own share above it: {median(cpu_us['gateway', 8]) - floor:.1f} us"
    )
    print(f"gateway/pgbouncer at 8 clients: {median(ratio8):.2f}")


if __name__ == "__main__":
    main()
