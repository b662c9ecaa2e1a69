"""Other clients (the real pgcli and mycli), and clients that are not installed: those are
found before the broker creates a session, on every command that would run one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import DBACCESS, Cli
from tests.terminal import own_terminal, read_until

pytestmark = pytest.mark.integration

# pgcli and mycli come with the dev extra, next to this interpreter.
TOOLS = str(Path(sys.executable).parent)


def run(cli: Cli, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**cli.env, "PATH": TOOLS + os.pathsep + os.environ.get("PATH", ""), **env}
    return subprocess.run(
        [*DBACCESS, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def flat(text: str) -> str:
    return " ".join(text.split())


def secret_service_items(cli: Cli) -> list[dict[str, str]]:
    """The attributes of every item in the test Secret Service (keyring's and others')."""
    script = (
        "import json, secretstorage\n"
        "with secretstorage.dbus_init() as bus:\n"
        "    c = secretstorage.get_default_collection(bus)\n"
        "    print(json.dumps([i.get_attributes() for i in c.get_all_items()]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    items: list[dict[str, str]] = json.loads(out)
    return items


def test_pgcli_runs_with_the_sessions_credentials(cli: Cli, tmp_path: Path) -> None:
    result = run(
        cli,
        "connect",
        "demo",
        "--role",
        "readonly",
        "--client",
        "pgcli",
        "--",
        "--less-chatty",
        "-t",
        "-c",
        "select current_user || ':' || count(*) from orders",
        HOME=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    user, count = result.stdout.split()[-1].split(":")  # the last word: the row
    assert user.startswith("dba_alice_") and int(count) >= 3
    assert not cli.role_exists(user)


def test_mycli_runs_with_the_password_in_a_file_not_argv_nor_keyring(
    cli: Cli, tmp_path: Path
) -> None:
    # A user who told mycli to keep passwords in the keyring: ours must not land there.
    (tmp_path / ".myclirc").write_text("[main]\nuse_keyring = True\n")
    before = secret_service_items(cli)
    result = run(
        cli,
        "connect",
        "shop",
        "--role",
        "readonly",
        "--client",
        "mycli",
        "--",
        "--format=tsv",
        "-e",
        "select current_user(), database()",
        HOME=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[-1].split("\t")
    user, database = row
    assert user.startswith("dba_alice_") and database == "shop"
    assert secret_service_items(cli) == before
    assert not cli.mariadb_account_exists(user.split("@")[0])


def test_mycli_command_line_carries_no_password(cli: Cli, tmp_path: Path) -> None:
    """What mycli was started with, seen from inside it (its /proc cmdline)."""
    probe = tmp_path / "mycli"
    probe.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    probe.chmod(0o700)
    result = run(
        cli, "connect", "shop", "--role", "readonly", "--client", str(probe), "--", "-e", "select 1"
    )
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    password_file = next(a for a in args if a.startswith("--password-file="))
    assert "--use-keyring=false" in args
    assert args[-2:] == ["-e", "select 1"]  # the user's own arguments come last
    assert not Path(password_file.split("=", 1)[1]).exists()  # wiped with the session


class Sessions:
    """Session rows and audit records of the broker's store, to prove none was added."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.before = self.count()
        self.roles = sorted(cli.managed_roles())

    def count(self) -> int:
        store = self.cli.store()
        try:
            return len(store.audit_records())
        finally:
            store.close()

    def unchanged(self) -> bool:
        return self.count() == self.before


def assert_not_found_before_a_session(
    cli: Cli, result: subprocess.CompletedProcess[str], sessions: Sessions, message: str
) -> None:
    assert result.returncode == 10, result.stderr  # LAUNCH
    assert f"error: {message}" in flat(result.stderr)
    assert "hint: " in result.stderr
    assert sessions.unchanged(), "the broker was asked for a session"
    assert sorted(cli.managed_roles()) == sessions.roles
    assert sorted(p.name for p in cli.runtime_dir.iterdir()) == []


def test_a_client_that_is_not_installed_is_found_before_a_session(cli: Cli) -> None:
    sessions = Sessions(cli)
    result = run(cli, "connect", "demo", "--role", "readonly", "--client", "no-such-client")
    assert_not_found_before_a_session(cli, result, sessions, "no-such-client was not found on PATH")
    assert "or name another client with --client" in flat(result.stderr)
    # the profile's choice too
    config = Path(cli.env["DBACCESS_CONFIG_DIR"]) / "config.toml"
    original = config.read_text()
    try:
        config.write_text(original + '\n[profiles.default.client]\nmariadb = "mycli-missing"\n')
        result = run(cli, "connect", "shop", "--role", "readonly")
        assert_not_found_before_a_session(
            cli, result, sessions, "mycli-missing was not found on PATH"
        )
        # ... but only for the engine that needs it: the broker says demo is PostgreSQL
        fine = run(cli, "connect", "demo", "--role", "readonly", "--", "-Atc", "select 1")
        assert fine.returncode == 0 and fine.stdout.strip() == "1", fine.stderr
    finally:
        config.write_text(original)


def test_a_missing_default_client_is_found_before_a_session(cli: Cli, tmp_path: Path) -> None:
    only_psql = tmp_path / "bin"
    only_psql.mkdir()
    real = subprocess.run(
        ["sh", "-c", "command -v psql"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (only_psql / "psql").symlink_to(real)
    sessions = Sessions(cli)
    nothing = run(cli, "connect", "demo", "--role", "readonly", PATH=str(tmp_path / "none"))
    assert_not_found_before_a_session(cli, nothing, sessions, "psql was not found on PATH")
    assert "apt-get install postgresql-client" in nothing.stderr
    no_mariadb = run(cli, "connect", "shop", "--role", "readonly", PATH=str(only_psql))
    assert_not_found_before_a_session(
        cli, no_mariadb, sessions, "neither mariadb nor mysql was found on PATH"
    )
    psql_there = run(
        cli, "connect", "demo", "--role", "readonly", "--", "-Atc", "select 2", PATH=str(only_psql)
    )
    assert psql_there.returncode == 0 and psql_there.stdout.strip() == "2", psql_there.stderr
    # The engines the broker named are remembered: with psql here and no MariaDB client, the
    # next connect to demo asks the broker for nothing before its session.
    asked = cli.stack.broker_log.read_text().count('"GET /v1/targets')
    again = run(
        cli, "connect", "demo", "--role", "readonly", "--", "-Atc", "select 3", PATH=str(only_psql)
    )
    assert again.returncode == 0 and again.stdout.strip() == "3", again.stderr
    assert cli.stack.broker_log.read_text().count('"GET /v1/targets') == asked


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "full-cli"])
def test_an_exec_command_that_is_not_installed_is_found_before_a_session(
    cli: Cli, fast: bool
) -> None:
    sessions = Sessions(cli)
    extra = {} if fast else {"DBACCESS_FAST_EXEC": "0"}
    result = run(
        cli, "exec", "demo", "--role", "readonly", "--", "pg_dumpp", "--schema-only", **extra
    )
    assert_not_found_before_a_session(cli, result, sessions, "pg_dumpp was not found on PATH")
    assert "or give its full path after --" in flat(result.stderr)
    as_json = run(
        cli, "--json", "exec", "demo", "--role", "readonly", "--", "./nowhere/tool", **extra
    )
    assert as_json.returncode == 10 and as_json.stdout == ""
    # exec leaves stdout to the command: its envelope is the last line on stderr
    assert json.loads(as_json.stderr.splitlines()[-1])["error"]["message"] == (
        "./nowhere/tool is not an executable file"
    )
    assert sessions.unchanged()


def test_breakglass_finds_a_missing_client_before_the_glass_is_broken(cli: Cli) -> None:
    login = cli.login("carol", profile="carol-clients")
    assert login.returncode == 0, login.stderr
    sessions = Sessions(cli)
    result = run(
        cli,
        "--profile",
        "carol-clients",
        "--no-input",
        "breakglass",
        "demo",
        "--incident",
        "INC-7",
        "--reason",
        "checking",
        "--client",
        "no-such-client",
    )
    assert_not_found_before_a_session(cli, result, sessions, "no-such-client was not found on PATH")
    # Only the MariaDB client missing: the break-glass policy tells shop's engine, so the
    # glass stays whole there too (demo's psql is present, so that alone proves nothing).
    result = run(
        cli,
        "--profile",
        "carol-clients",
        "--no-input",
        "breakglass",
        "shop",
        "--incident",
        "INC-7",
        "--reason",
        "checking",
        DBACCESS_MYSQL="no-such-mariadb",
    )
    assert_not_found_before_a_session(
        cli, result, sessions, "no-such-mariadb was not found on PATH"
    )


@pytest.mark.parametrize(
    ("engine_target", "client", "query", "quit_command"),
    [
        ("demo", "pgcli", b"select 'me=' || current_user;\r", b"\\q\r"),
        ("shop", "mycli", b"select concat('me=', current_user());\r", b"quit\r"),
    ],
    ids=["pgcli", "mycli"],
)
def test_interactive_clients_through_a_pty(
    cli: Cli, tmp_path: Path, engine_target: str, client: str, query: bytes, quit_command: bytes
) -> None:
    import pty
    import signal

    controller, terminal = pty.openpty()
    env = {
        **cli.env,
        "PATH": TOOLS + os.pathsep + os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "TERM": "xterm",
        "PAGER": "cat",
        "LESS": "-FRX",
    }

    process = subprocess.Popen(
        [*DBACCESS, "connect", engine_target, "--role", "readonly", "--client", client],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        banner = read_until(controller, r"connected as (dba_alice_[0-9a-f]{10})", timeout=30)
        found = re.search(r"connected as (dba_alice_[0-9a-f]{10})", banner)
        assert found
        user = found.group(1)
        read_until(controller, rf"{engine_target}>", timeout=30)  # the client's prompt
        os.write(controller, query)
        read_until(controller, rf"me={user}", timeout=30)
        os.write(controller, quit_command)
        read_until(controller, r"session revoked", timeout=30)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(controller)
    if client == "mycli":
        assert not cli.mariadb_account_exists(user)
    else:
        assert not cli.role_exists(user)
