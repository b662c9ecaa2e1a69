"""CLI speed: ``dbaccess --version``, ``dbaccess --help``, and the overhead of
``dbaccess exec ... -- psql -c 'select 1'`` over plain ``psql -c 'select 1'`` with a
static password. Medians of --runs runs each.

    python bench/startup.py [--runs 15]

The exec overhead includes everything dbaccess adds: token from the keyring (a private
gnome-keyring here), session creation at the broker (a user created in PostgreSQL),
credential files, and revocation (the user dropped) after psql exits. stdin is not a
terminal, as in a script, so exec takes its fast path (dbaccess/cli/fast_exec.py); the same
run with DBACCESS_FAST_EXEC=0 (the full typer CLI) is printed for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median, table  # noqa: E402

import dbaccess  # noqa: E402
from dbaccess.client.dbclients.postgres import find_psql  # noqa: E402
from dbaccess.sandbox.idp import approve_device_code  # noqa: E402
from dbaccess.sandbox.secret_service import SecretService  # noqa: E402
from dbaccess.sandbox.stack import Stack  # noqa: E402

DBACCESS = shutil.which("dbaccess", path=str(Path(sys.executable).parent)) or "dbaccess"


def timed(argv: list[str], env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            argv,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        samples.append(time.perf_counter() - started)
    return median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    env = dict(os.environ)
    # As a pip install does: dbaccess's own modules byte-compiled (an editable checkout
    # under PYTHONDONTWRITEBYTECODE=1 would otherwise compile them at every run).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(dbaccess.__file__).parent)],
        check=True,
        env={k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )
    version = timed([DBACCESS, "--version"], env, args.runs)
    help_ = timed([DBACCESS, "--help"], env, args.runs)
    with (
        tempfile.TemporaryDirectory(prefix="dbaccess-bench-") as tmp,
        Stack(Path(tmp) / "stack", reconcile_interval="1h") as stack,
        SecretService(Path(tmp) / "secrets") as secrets,
    ):
        cli_env = stack.cli_env()
        cli_env.update(secrets.env)
        login = subprocess.Popen(
            [DBACCESS, "--json", "login"], env=cli_env, stdout=subprocess.PIPE, text=True
        )
        assert login.stdout is not None
        approve_device_code(
            json.loads(login.stdout.readline())["data"]["verification_uri_complete"], "alice"
        )
        login.communicate(timeout=60)
        psql = find_psql()
        plain_env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(stack.postgres.port),
            "PGUSER": stack.postgres.admin_user,
            "PGDATABASE": "demo",
            "PGPASSWORD": stack.postgres.admin_password,
        }
        plain = timed([psql, "-qAt", "-c", "select 1"], plain_env, args.runs)
        exec_argv = [
            DBACCESS,
            "exec",
            "demo",
            "--role",
            "readonly",
            "--",
            psql,
            "-qAt",
            "-c",
            "select 1",
        ]
        through = timed(exec_argv, cli_env, args.runs)
        full = timed(exec_argv, {**cli_env, "DBACCESS_FAST_EXEC": "0"}, args.runs)
    print(f"CLI speed, medians of {args.runs} runs, {time.strftime('%Y-%m-%d')}")
    print(
        table(
            ["measure", "median ms", "goal ms"],
            [
                ["dbaccess --version", f"{version * 1000:.0f}", "100"],
                ["dbaccess --help", f"{help_ * 1000:.0f}", "150"],
                ["plain psql -c 'select 1'", f"{plain * 1000:.0f}", ""],
                ["dbaccess exec ... psql -c 'select 1'", f"{through * 1000:.0f}", ""],
                ["exec overhead", f"{(through - plain) * 1000:.0f}", "250"],
                ["  the same through the full CLI", f"{(full - plain) * 1000:.0f}", ""],
            ],
        )
    )
    print(f"exec / plain ratio: {through / plain:.1f}")


if __name__ == "__main__":
    main()
