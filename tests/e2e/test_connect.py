"""The main job, end to end: SSO login -> JIT PostgreSQL user -> psql -> revoke and wipe."""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbaccess.errors import ExitCode
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration


def wait_for(check, timeout: float = 20, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def live_session_dirs(cli: Cli) -> list[str]:
    return sorted(p.name for p in cli.runtime_dir.iterdir()) if cli.runtime_dir.exists() else []


def test_connect_runs_psql_as_an_ephemeral_user_then_drops_it(cli: Cli) -> None:
    result = cli.run(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--reason",
        "e2e check",
        "--",
        "-At",
        "-c",
        "select current_user",
    )
    assert result.returncode == 0, result.stderr
    user = result.stdout.strip()
    assert re.fullmatch(r"dba_alice_[0-9a-f]{10}", user), result.stdout
    assert user in result.stderr  # the human notice names the user too
    # afterwards: the role is gone and nothing is left locally
    assert not cli.role_exists(user)
    assert live_session_dirs(cli) == []
    # and the audit trail holds the grant and the revocation of that user
    store = cli.store()
    try:
        records = store.audit_records()
    finally:
        store.close()
    events = [(r.event, r.detail.get("db_user")) for r in records]
    assert ("session.granted", user) in events
    assert ("session.revoked", user) in events
    granted = next(
        r for r in records if r.event == "session.requested" and r.detail["db_user"] == user
    )
    assert granted.detail["reason"] == "e2e check"
    assert granted.detail["rule"] == "dev-readonly"


def test_readonly_session_cannot_write(cli: Cli) -> None:
    result = cli.run(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "insert into orders (customer, total) values ('mallory', 1)",
    )
    assert result.returncode != 0
    assert "read-only transaction" in result.stderr or "permission denied" in result.stderr
    # and reading works in the same kind of session
    ok = cli.run(
        "connect", "demo", "--role", "readonly", "--", "-At", "-c", "select count(*) from orders"
    )
    assert ok.returncode == 0, ok.stderr
    assert int(ok.stdout.strip()) >= 3


def test_psql_exit_code_is_returned(cli: Cli) -> None:
    result = cli.run("connect", "demo", "--role", "readonly", "--", "-c", "select nonsense")
    assert result.returncode == 1  # psql's own code for a failed -c command
    assert 'column "nonsense" does not exist' in result.stderr


def test_session_expiry_terminates_a_connected_psql(cli: Cli) -> None:
    started = cli.popen(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--duration",
        "3s",
        "--",
        "-At",
        "-c",
        "select current_user",
        "-c",
        "select pg_sleep(60)",
    )
    assert started.stdout is not None
    user = started.stdout.readline().strip()
    assert user.startswith("dba_alice_")
    store = cli.store()
    lease = next(s for s in store.sessions_of("alice", live_only=False) if s.db_user == user)
    store.close()
    _, err = started.communicate(timeout=30)
    ended = datetime.now(UTC)
    assert started.returncode != 0, err  # psql lost its connection
    assert "terminat" in err or "closed the connection" in err, err
    lag = (ended - lease.expires_at).total_seconds()
    assert lag < 5, f"psql ended {lag:.1f}s after expiry"
    assert not cli.role_exists(user)
    assert live_session_dirs(cli) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_to_the_cli_revokes_and_wipes(cli: Cli, sig: signal.Signals) -> None:
    started = cli.popen(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--",
        "-At",
        "-c",
        "select current_user",
        "-c",
        "select pg_sleep(60)",
    )
    assert started.stdout is not None
    user = started.stdout.readline().strip()
    assert cli.role_exists(user)
    assert len(live_session_dirs(cli)) == 1
    started.send_signal(sig)
    started.communicate(timeout=20)
    assert started.returncode == 128 + sig
    assert not cli.role_exists(user)
    assert live_session_dirs(cli) == []


def test_password_never_in_argv_env_or_stdout(cli: Cli) -> None:
    started = cli.popen(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--",
        "-At",
        "-c",
        "select current_user",
        "-c",
        "select pg_sleep(60)",
    )
    assert started.stdout is not None
    user = started.stdout.readline().strip()
    (session,) = list(cli.runtime_dir.iterdir())
    assert oct(session.stat().st_mode & 0o777) == "0o700"
    passfile = session / "pgpass"
    assert oct(passfile.stat().st_mode & 0o777) == "0o600"
    password = passfile.read_text().strip().rsplit(":", 1)[1]
    assert len(password) >= 32
    leaks = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if password.encode() in data:
                leaks.append((pid, part))
    started.send_signal(signal.SIGTERM)
    out, err = started.communicate(timeout=20)
    assert leaks == []
    assert password not in out and password not in err
    assert not cli.role_exists(user)
    # nor did it reach a lasting file: broker log and store, server logs, data directories,
    # the CLI's config and keyring files
    for root in (cli.stack.workdir, cli.secrets.workdir):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket():
                assert password.encode() not in path.read_bytes(), f"password found in {path}"


def test_policy_denial_is_clear_and_creates_nothing(cli: Cli) -> None:
    before = set(cli.managed_roles())
    result = cli.run(
        "connect", "demo", "--role", "readonly", "--duration", "8h", "--", "-c", "select 1"
    )
    assert result.returncode == ExitCode.DENIED
    assert "rule 'dev-readonly' allows at most 1h" in result.stderr
    assert set(cli.managed_roles()) == before


def test_after_sigkill_the_next_connect_sweeps_and_revokes(cli: Cli) -> None:
    started = cli.popen(
        "connect",
        "demo",
        "--role",
        "readonly",
        "--",
        "-At",
        "-c",
        "select current_user",
        "-c",
        "select pg_sleep(60)",
    )
    assert started.stdout is not None
    user = started.stdout.readline().strip()
    psql = children_of(started.pid)
    started.kill()  # no chance to clean up
    for pid in psql:  # the orphaned psql would otherwise sleep on, holding our pipes
        os.kill(pid, signal.SIGKILL)
    started.communicate(timeout=20)
    assert len(live_session_dirs(cli)) == 1
    assert cli.role_exists(user)
    result = cli.run("connect", "demo", "--role", "readonly", "--", "-c", "select 1")
    assert result.returncode == 0, result.stderr
    assert live_session_dirs(cli) == []
    assert not cli.role_exists(user)
