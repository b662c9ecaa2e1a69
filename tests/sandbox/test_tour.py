"""The README's main command, ``python -m dbaccess.sandbox``, as a new user runs it.

Each test runs the real tour (PostgreSQL, MariaDB, the identity provider, a Secret Service
and a broker) with a private TMPDIR, in an environment without PYTHONUNBUFFERED, and checks
what the user would: the output, the exit code, and that nothing is left running or on disk.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbaccess.sandbox.lifeline import marked_processes
from tests.terminal import own_terminal, read_until

pytestmark = pytest.mark.integration

TOUR = [sys.executable, "-m", "dbaccess.sandbox"]
WHERE = re.compile(r"in (\S+dbaccess-sandbox-\S+)")
PORTS = re.compile(
    r"broker http://127\.0\.0\.1:(\d+), identity provider "
    r"http://127\.0\.0\.1:(\d+)/oidc, PostgreSQL 127\.0\.0\.1:(\d+)"
)


def tour_env(tmp_path: Path, *, deep: bool = False) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONUNBUFFERED" and not k.startswith(("DBACCESS_", "PG", "MYSQL_"))
    }
    # deep: a TMPDIR too deep for MariaDB's socket path under it (pytest's own base temp in
    # CI was), which the tour must survive
    tmp = tmp_path / ("deep" * 20 if deep else "") / "tmp"
    tmp.mkdir(parents=True)
    env["TMPDIR"] = str(tmp)
    return env


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def assert_nothing_left(tmp: Path, output: str, within: float = 30) -> None:
    where = WHERE.search(output)
    ports = PORTS.search(output)
    assert where and ports, output
    root = Path(where.group(1))
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not marked_processes(root) and not root.exists():
            break
        time.sleep(0.2)
    assert marked_processes(root) == [], "processes of the tour still run"
    assert not root.exists() and list(tmp.iterdir()) == []
    assert [p for p in map(int, ports.groups()) if listening(p)] == []


def test_help_prints_help_and_starts_nothing(tmp_path: Path) -> None:
    env = tour_env(tmp_path)
    for flag in ("--help", "-h"):
        result = subprocess.run(
            [*TOUR, flag],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: python -m dbaccess.sandbox" in result.stdout
        assert "starting" not in result.stderr
    wrong = subprocess.run(
        [*TOUR, "--psql-args"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert wrong.returncode == 2 and "unrecognized arguments" in wrong.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_the_tour_runs_to_the_end_without_pythonunbuffered(tmp_path: Path) -> None:
    env = tour_env(tmp_path, deep=True)
    result = subprocess.run(
        [*TOUR, "--", "-At", "-c", "select current_user"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"dba_alice_[0-9a-f]{10}\n", result.stdout)
    assert "session users left in PostgreSQL: 0" in result.stderr
    assert "session.revoked" in result.stderr
    assert_nothing_left(Path(env["TMPDIR"]), result.stderr)


def test_a_killed_tour_leaves_no_daemons_or_files(tmp_path: Path) -> None:
    env = tour_env(tmp_path)
    with subprocess.Popen(
        [*TOUR, "--", "-c", "select pg_sleep(600)"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as tour:
        assert tour.stderr is not None
        seen = ""
        deadline = time.monotonic() + 180
        try:
            while "connected as" not in seen and time.monotonic() < deadline:
                line = tour.stderr.readline()
                if not line:
                    break
                seen += line
            assert "connected as" in seen, seen
            root = Path(WHERE.search(seen).group(1))  # type: ignore[union-attr]
            assert len(marked_processes(root)) > 5  # the servers, the broker, dbaccess...
        finally:
            tour.kill()  # what a SIGKILL leaves is the watchdog's to clean
            tour.wait(timeout=10)
    assert_nothing_left(Path(env["TMPDIR"]), seen)


def test_ctrl_c_at_the_psql_prompt_ends_the_tour_cleanly(tmp_path: Path) -> None:
    env = {**tour_env(tmp_path), "TERM": "dumb", "PAGER": "cat", "PSQL_PAGER": "cat"}
    controller, terminal = pty.openpty()

    tour = subprocess.Popen(
        TOUR, stdin=terminal, stdout=terminal, stderr=terminal, env=env, preexec_fn=own_terminal
    )
    os.close(terminal)
    try:
        output = read_until(controller, r"demo=> ", 180, must=False)
        assert "demo=> " in output, output
        os.write(controller, b"\x03")
        output += read_until(controller, r"sandbox: stopped", 90, must=False)
        assert tour.wait(timeout=60) == 130, output
        output += read_until(controller, r"$^", 2, must=False)
    finally:
        if tour.poll() is None:
            os.killpg(tour.pid, signal.SIGKILL)
        os.close(controller)
    assert "Traceback" not in output and "warning" not in output, output
    assert "session users left in PostgreSQL: 0" in output
    assert_nothing_left(Path(env["TMPDIR"]), output)


def test_a_mariadb_socket_path_too_long_is_said_at_once(tmp_path: Path) -> None:
    from dbaccess.sandbox.mariadb import MariaDBServer
    from dbaccess.sandbox.processes import ServiceError

    server = MariaDBServer(tmp_path / ("x" * 100))
    with pytest.raises(ServiceError, match="longer than a Unix socket allows"):
        server.start()


def test_the_gateway_tour_reaches_vault_through_the_gateway_and_shows_its_records(
    tmp_path: Path,
) -> None:
    env = tour_env(tmp_path)
    result = subprocess.run(
        [*TOUR, "--gateway", "--", "-At", "-c", "select current_user", "-c", "select 42"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"gw_alice_[0-9a-f]{10}\n42\n", result.stdout)
    gateway = re.search(r", gateway 127\.0\.0\.1:(\d+)", result.stderr)
    assert gateway, result.stderr
    assert f"through the gateway 127.0.0.1:{gateway.group(1)}" in result.stderr
    assert "session users left in PostgreSQL: 0" in result.stderr
    assert "the gateway recorded 2 statement(s)" in result.stderr
    assert "#2 query: select 42, 1 row(s), completed" in result.stderr
    assert_nothing_left(Path(env["TMPDIR"]), result.stderr)
    assert not listening(int(gateway.group(1)))
