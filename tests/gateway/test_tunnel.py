"""``dbaccess tunnel`` end to end: the real CLI process, broker, ``dbaccess-broker gateway``
process and PostgreSQL; psql and psycopg connect to the tunnel's port as a GUI would."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbaccess.gateway.sessions import ScramVerifier
from dbaccess.sandbox.processes import free_port
from dbaccess.sandbox.stack import Stack
from tests.e2e.conftest import Cli, readline_within

pytestmark = pytest.mark.integration


@dataclass
class Running:
    process: subprocess.Popen[str]
    settings: dict[str, Any]
    stdout: str = ""
    stderr: str = ""
    code: int | None = None
    users: list[str] = field(default_factory=list)  # db users seen through the tunnel

    def conninfo(self, **override: Any) -> dict[str, Any]:
        s = self.settings
        info = dict(
            host=s["host"],
            port=s["port"],
            dbname=s["database"],
            user=s["user"],
            password=s["password"],
            sslmode=s["sslmode"],
            connect_timeout=10,
        )
        return {**info, **override}

    def current_user(self) -> str:
        with psycopg.connect(**self.conninfo()) as conn:
            row = conn.execute("select current_user").fetchone()
        assert row is not None
        self.users.append(str(row[0]))
        return str(row[0])

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.code is None:
            self.process.send_signal(sig)
            out, err = self.process.communicate(timeout=30)
            self.stdout += out
            self.stderr += err
            self.code = self.process.returncode


@contextmanager
def tunnel(cli: Cli, *args: str, port: int | None = None) -> Iterator[Running]:
    port = port or free_port()
    process = cli.popen(
        "--json", "tunnel", "vault", "--role", "readonly", "--port", str(port), *args
    )
    try:
        first = readline_within(process, 30)
        running = Running(process, json.loads(first)["data"], stdout=first)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        if "running" in locals():
            running.stdout += out
            running.stderr += err
            running.code = process.returncode


def active_sessions(cli: Cli) -> list[dict[str, Any]]:
    listed = cli.run("--json", "sessions")
    assert listed.returncode == 0, listed.stderr
    return [s for s in json.loads(listed.stdout)["data"] if s["state"] == "active"]


def matches_verifier(candidate: str, verifier: ScramVerifier) -> bool:
    salted = hashlib.pbkdf2_hmac("sha256", candidate.encode(), verifier.salt, verifier.iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return hashlib.sha256(client_key).digest() == verifier.stored_key


def secret_shaped(text: str) -> set[str]:
    """Every 32-character stretch of URL-safe characters: a gateway secret's shape."""
    found: set[str] = set()
    for run in re.findall(r"[A-Za-z0-9_-]{32,}", text):
        found.update(run[i : i + 32] for i in range(len(run) - 31))
    return found


def test_psql_and_psycopg_query_through_the_tunnel(gw_cli: Cli, gw_stack: Stack) -> None:
    with tunnel(gw_cli) as t:
        s = t.settings
        assert (s["host"], s["database"], s["user"], s["sslmode"]) == (
            "127.0.0.1", "vault", "dbaccess", "disable"
        )  # fmt: skip
        with psycopg.connect(**t.conninfo()) as conn:
            assert conn.execute("select count(*) from orders").fetchone() == (3,)
            user = conn.execute("select current_user").fetchone()
            assert user is not None and str(user[0]).startswith("gw_alice_")
            # psycopg's binary and prepared statements go through untouched
            cur = conn.cursor(binary=True)
            rows = cur.execute("select id from orders where id > %s", (0,), prepare=True)
            assert len(rows.fetchall()) == 3
        # psql, with the secret in the environment (never argv), sslmode prefer (its default)
        env = {**os.environ, "PGPASSWORD": s["password"], "PGCONNECT_TIMEOUT": "10"}
        psql = subprocess.run(
            ["psql", "-At", "-h", s["host"], "-p", str(s["port"]), "-U", s["user"], s["database"],
             "-c", "select count(*) from orders", "-c", "select ssl from pg_stat_ssl "
             "where pid = pg_backend_pid()"],
            env={**env, "PGSSLMODE": "prefer"}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert psql.returncode == 0, psql.stderr
        assert psql.stdout.splitlines() == ["3", "f"]
        # never in the tunnel's argv or environment
        for part in ("cmdline", "environ"):
            assert s["password"].encode() not in Path(f"/proc/{t.process.pid}/{part}").read_bytes()
        # the GUI's password is the local secret, kept in a private file — not the session's
        path = Path(s["password_file"])
        assert path.read_text().strip() == s["password"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        (session,) = active_sessions(gw_cli)
        lease = gw_cli.store().get(session["id"])
        assert lease is not None and lease.gateway_verifier
        verifier = ScramVerifier.parse(lease.gateway_verifier.rpartition("#")[0])  # before its MAC
        assert not matches_verifier(s["password"], verifier)
    assert t.code == 0, t.stderr
    # the gateway session secret never reaches the tunnel's output
    output = t.stdout + t.stderr
    assert not any(matches_verifier(c, verifier) for c in secret_shaped(output))
    assert not gw_cli.role_exists(session["db_user"])


def test_the_local_secret_is_stable_and_a_wrong_one_is_refused(gw_cli: Cli) -> None:
    with tunnel(gw_cli) as t:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**t.conninfo(password="not-the-secret"))
        with pytest.raises(psycopg.OperationalError, match='tunnel\'s user is "dbaccess"'):
            psycopg.connect(**t.conninfo(user="postgres"))
        with pytest.raises(psycopg.OperationalError, match='for database "vault"'):
            psycopg.connect(**t.conninfo(dbname="demo"))
        assert t.current_user().startswith("gw_alice_")  # still serving
        first = t.settings["password"]
    assert t.code == 0, t.stderr
    with tunnel(gw_cli) as again:  # a GUI that saved the password keeps working
        assert again.settings["password"] == first
        assert again.current_user().startswith("gw_alice_")


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, local_port = fields[1].rsplit(":", 1)
            if int(local_port, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(address)
    return found


def test_the_tunnel_listens_on_127_0_0_1_only(gw_cli: Cli) -> None:
    with tunnel(gw_cli) as t:
        port = t.settings["port"]
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, no wildcard, no ::
        for other in ("127.0.0.2", "::1"):
            family = socket.AF_INET6 if ":" in other else socket.AF_INET
            with socket.socket(family) as probe, pytest.raises(ConnectionRefusedError):
                probe.settimeout(5)
                probe.connect((other, port))
    assert t.code == 0, t.stderr


def test_a_revoked_session_is_replaced_for_the_next_connection(gw_cli: Cli) -> None:
    with tunnel(gw_cli) as t:
        conn = psycopg.connect(**t.conninfo(), autocommit=True)
        try:
            first = conn.execute("select current_user").fetchone()
            assert first is not None
            (session,) = active_sessions(gw_cli)
            assert session["db_user"] == first[0]
            assert gw_cli.run("revoke", session["id"]).returncode == 0
            deadline = time.monotonic() + 5
            with pytest.raises(psycopg.OperationalError):
                while time.monotonic() < deadline:  # the gateway ends it (57P01)
                    conn.execute("select 1")
                    time.sleep(0.05)
        finally:
            conn.close()
        # the same port, user and secret: a new session behind them
        second = t.current_user()
        assert second != first[0] and second.startswith("gw_alice_")
        (replacement,) = active_sessions(gw_cli)
        assert replacement["id"] != session["id"] and replacement["db_user"] == second
        assert t.current_user() == second  # one session for the connections that follow
    assert t.code == 0, t.stderr
    assert "could not revoke" not in t.stderr
    assert not gw_cli.role_exists(second)


def test_an_expired_session_is_replaced_without_the_gui_changing_anything(gw_cli: Cli) -> None:
    with tunnel(gw_cli, "--duration", "6s") as t:
        first = t.current_user()
        time.sleep(7)  # past its end (and its margin: a quarter of 6 s before it)
        second = t.current_user()
        assert second != first and second.startswith("gw_alice_")
    assert t.code == 0, t.stderr
    assert "could not revoke" not in t.stderr


def test_a_cancel_request_reaches_the_query_through_the_tunnel(gw_cli: Cli) -> None:
    with tunnel(gw_cli) as t, psycopg.connect(**t.conninfo()) as conn:
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            timer.cancel()
        assert time.monotonic() - started < 10
        conn.rollback()
        assert conn.execute("select 1").fetchone() == (1,)  # the connection stays usable


def test_sigint_and_sigterm_revoke_the_tunnels_sessions_and_exit_0(gw_cli: Cli) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        with tunnel(gw_cli) as t:
            first = t.current_user()
            (session,) = active_sessions(gw_cli)
            assert gw_cli.run("revoke", session["id"]).returncode == 0
            second = t.current_user()
            conn = psycopg.connect(**t.conninfo())  # open while the tunnel stops
            assert gw_cli.role_exists(second)
            t.stop(sig)
            assert t.code == 0, t.stderr
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
            conn.close()
        assert not gw_cli.role_exists(first) and not gw_cli.role_exists(second)
        assert active_sessions(gw_cli) == []


def test_a_busy_port_is_a_clear_error_and_creates_no_session(gw_cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gw_cli.run("tunnel", "vault", "--role", "readonly", "--port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert f"hint: pick another: --port {port + 1}" in result.stderr
    assert active_sessions(gw_cli) == []


def test_the_text_output_says_what_to_paste(gw_cli: Cli) -> None:
    port = free_port()
    process = gw_cli.popen("tunnel", "vault", "--role", "readonly", "--port", str(port))
    try:
        first = readline_within(process, 30)
        assert first.startswith(f"Tunnel to vault as readonly on 127.0.0.1:{port}")
        lines = [process.stdout.readline() for _ in range(9)]  # type: ignore[union-attr]
        text = first + "".join(lines)
        for expected in ("Host      127.0.0.1", f"Port      {port}", "Database  vault",
                         "User      dbaccess", "SSL       disable",
                         f"jdbc:postgresql://127.0.0.1:{port}/vault?sslmode=disable"):  # fmt: skip
            assert expected in text
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert re.search(r"session [0-9a-f-]+ \(gw_alice_\w+\) until", err)
    assert "revoked" in err


def test_a_direct_target_is_refused_and_its_session_revoked(gw_cli: Cli) -> None:
    result = gw_cli.run("tunnel", "demo", "--role", "readonly", "--port", str(free_port()))
    assert result.returncode == 2, result.stderr
    assert "demo is not reached through the gateway" in result.stderr
    assert "hint: for a direct target: dbaccess creds demo --role readonly --reveal" in (
        result.stderr
    )
    assert active_sessions(gw_cli) == []


def test_a_tunnel_waiting_for_approval_names_the_tunnel_command_to_run_once_approved(
    gw_cli: Cli,
) -> None:
    port = free_port()
    result = gw_cli.run(
        "tunnel", "vault", "--role", "readwrite", "--reason", "fix", "--no-wait",
        "--port", str(port),
    )  # fmt: skip
    assert result.returncode == 6, result.stderr  # approval pending
    found = re.search(
        r"request ([0-9a-f-]{36}) waits for 2 approval\(s\) from leads", result.stderr
    )
    assert found, result.stderr
    rid = found.group(1)
    try:
        assert (
            f"hint: once approved: dbaccess tunnel vault --role readwrite --port {port} "
            f"--request {rid}\n" in result.stderr
        )
    finally:
        gw_cli.run("withdraw", rid)
    assert active_sessions(gw_cli) == []
