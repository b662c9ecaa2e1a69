"""``dbaccess exec`` without the CLI stack (dbaccess/cli/fast_exec.py), end to end.

Every run here is ``python -X importtime -m dbaccess ...`` with stdin not a terminal, so each
test knows which path really ran: the fast path imports neither typer nor httpx, the full
CLI (``DBACCESS_FAST_EXEC=0``, or a fall-back) imports typer. For the user the two must be
the same: the command's output and exit code, the error text and JSON envelope, the
credentials the command sees, and nothing left behind (database user, session directory).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration

# The full CLI's stack, which the fast path exists to avoid importing.
CLI_STACK = frozenset({"typer", "click", "rich", "pydantic", "httpx", "keyring"})
PATHS = {"fast": {}, "full": {"DBACCESS_FAST_EXEC": "0"}}
both_paths = pytest.mark.parametrize("path", list(PATHS))

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)\s*$")
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str  # dbaccess's and the command's, without the -X importtime lines
    imported: frozenset[str]  # top-level packages imported by the dbaccess process

    @property
    def full_cli(self) -> bool:
        return "typer" in self.imported

    @property
    def text(self) -> str:
        """stderr as one line (rich wraps the full CLI's messages at 80 columns)."""
        return flat(self.stderr)


def flat(text: str) -> str:
    return " ".join(text.split())


def split_importtime(stderr: str) -> tuple[str, frozenset[str]]:
    kept, imported = [], set()
    for line in stderr.splitlines(keepends=True):
        if line.startswith("import time:"):
            found = _IMPORT_LINE.match(line.rstrip("\n"))
            if found:
                imported.add(found.group(1).split(".")[0])
            continue
        kept.append(line)
    return "".join(kept), frozenset(imported)


def command(*args: str) -> list[str]:
    return [sys.executable, "-X", "importtime", "-m", "dbaccess", *args]


def environment(cli: Cli, path: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**cli.env, **PATHS[path], **(extra or {})}
    assert path == "full" or "DBACCESS_FAST_EXEC" not in env
    return env


def run(
    cli: Cli, *args: str, path: str = "fast", env: dict[str, str] | None = None, timeout: float = 60
) -> Run:
    done = subprocess.run(
        command(*args),
        env=environment(cli, path, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    stderr, imported = split_importtime(done.stderr)
    return Run(done.returncode, done.stdout, stderr, imported)


def finish(process: subprocess.Popen[str], timeout: float = 60) -> Run:
    out, err = process.communicate(timeout=timeout)
    stderr, imported = split_importtime(err)
    return Run(process.returncode, out, stderr, imported)


def assert_ran(result: Run, path: str) -> None:
    """The run really took ``path``: no CLI stack on the fast path, typer on the full one."""
    if path == "fast":
        assert not result.imported & CLI_STACK, (
            f"the fast path imported {sorted(result.imported & CLI_STACK)}: {result.stderr}"
        )
    else:
        assert result.full_cli, result.stderr


def assert_handed_over(result: Run) -> None:
    """The fast path, continued for approvals: the pending request read with the wire
    models (pydantic), over the same standard-library transport (no httpx), never typer's
    command line."""
    assert "pydantic" in result.imported and not result.full_cli, result.stderr
    assert "httpx" not in result.imported, result.stderr


def session_dirs(cli: Cli) -> list[str]:
    return sorted(p.name for p in cli.runtime_dir.glob("session-*"))


def assert_nothing_left(cli: Cli, roles_before: set[str]) -> None:
    """No session directory and no database user beyond those that existed before."""
    assert session_dirs(cli) == []
    assert set(cli.managed_roles()) <= roles_before


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def passfile_password(line: str) -> str:
    """The password field of a .pgpass line (host:port:db:user:password, ':' and '\\'
    escaped with a backslash)."""
    fields = re.split(r"(?<!\\):", line.rstrip("\n"), maxsplit=4)
    assert len(fields) == 5, line
    return re.sub(r"\\(.)", r"\1", fields[4])


@pytest.fixture
def roles_before(cli: Cli) -> set[str]:
    assert session_dirs(cli) == [], "a previous test left a session directory"
    return set(cli.managed_roles())


# --- the fast path is taken, and is lean -------------------------------------------------


def test_fast_path_runs_exec_without_the_cli_stack(cli: Cli, roles_before: set[str]) -> None:
    query = ("exec", "demo", "--role", "readonly", "--", "psql", "-At", "-c", "select current_user")
    fast = run(cli, *query)
    assert fast.returncode == 0, fast.stderr
    user = fast.stdout.strip()
    assert re.fullmatch(r"dba_alice_[0-9a-f]{10}", user), fast.stdout
    assert not fast.imported & CLI_STACK, sorted(fast.imported & CLI_STACK)
    assert "secretstorage" in fast.imported  # the login was read from the Secret Service
    assert not cli.role_exists(user)
    assert_nothing_left(cli, roles_before)

    # The same check catches the full CLI: it is not vacuous.
    full = run(cli, *query, path="full")
    assert full.returncode == 0, full.stderr
    assert {"typer", "httpx", "pydantic", "keyring"} <= full.imported
    assert full.stdout.strip().startswith("dba_alice_")
    assert not cli.role_exists(full.stdout.strip())


# --- the same session on both paths ------------------------------------------------------


@both_paths
def test_command_gets_postgres_credentials_its_exit_code_passes_and_nothing_is_left(
    cli: Cli, roles_before: set[str], tmp_path: Path, path: str
) -> None:
    copy = tmp_path / "pgpass-copy"
    script = (
        f'cat "$PGPASSFILE" > {shlex.quote(str(copy))}; '
        'env | grep -E "^(PG|MYSQL_|DBACCESS_SESSION=)" | sort; '
        'echo "current_user=$(psql -At -c "select current_user")"; '
        "exit 7"
    )
    # Leftovers in the caller's shell must not reach the command.
    result = run(
        cli,
        "exec",
        "demo",
        "--role",
        "readonly",
        "--",
        "sh",
        "-c",
        script,
        path=path,
        env={"PGPASSWORD": "stale-from-the-shell", "PGUSER": "someone"},
    )
    assert result.returncode == 7, result.stderr
    assert_ran(result, path)
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(seen) == {
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSFILE",
        "PGAPPNAME",
        "PGSSLMODE",
        "DBACCESS_SESSION",
        "current_user",
    }, seen
    user = seen["PGUSER"]
    assert re.fullmatch(r"dba_alice_[0-9a-f]{10}", user)
    assert seen["current_user"] == user  # psql logged in with the passfile alone
    assert (
        seen["PGHOST"],
        seen["PGPORT"],
        seen["PGDATABASE"],
        seen["PGSSLMODE"],
        seen["PGAPPNAME"],
    ) == ("127.0.0.1", str(cli.stack.postgres.port), "demo", "disable", "dbaccess")
    passfile = Path(seen["PGPASSFILE"])
    assert passfile.parent == cli.runtime_dir / f"session-{seen['DBACCESS_SESSION']}"
    assert re.fullmatch(_UUID, seen["DBACCESS_SESSION"])

    assert f"dbaccess: connected as {user} to demo (readonly), valid until" in result.text
    assert "dbaccess: session revoked, local files removed" in result.text
    assert not passfile.parent.exists()
    assert not cli.role_exists(user)
    assert_nothing_left(cli, roles_before)

    password = passfile_password(copy.read_text())
    assert len(password) >= 16
    assert password not in result.stdout + result.stderr


@both_paths
def test_command_on_mariadb_reads_its_credentials(cli: Cli, path: str) -> None:
    result = run(
        cli,
        "exec",
        "shop",
        "--role",
        "readonly",
        "--",
        "mariadb",
        "-N",
        "-e",
        "select current_user()",
        path=path,
    )
    assert result.returncode == 0, result.stderr
    assert_ran(result, path)
    found = re.fullmatch(r"(dba_alice_[0-9a-f]{10})@%", result.stdout.strip())
    assert found, result.stdout
    assert not cli.mariadb_account_exists(found.group(1))
    assert session_dirs(cli) == []


@both_paths
def test_json_leaves_stdout_to_the_command(cli: Cli, path: str) -> None:
    result = run(
        cli,
        "--json",
        "exec",
        "demo",
        "--role",
        "readonly",
        "--",
        "psql",
        "-At",
        "-c",
        "select 41 + 1",
        path=path,
    )
    assert result.returncode == 0, result.stderr
    assert_ran(result, path)
    assert result.stdout == "42\n"
    assert "connected as" not in result.stderr and "session revoked" not in result.stderr


@both_paths
def test_sigterm_ends_the_command_and_still_revokes(
    cli: Cli, roles_before: set[str], path: str
) -> None:
    with subprocess.Popen(
        command(
            "exec", "demo", "--role", "readonly", "--", "sh", "-c", 'echo "$PGUSER"; exec sleep 60'
        ),
        env=environment(cli, path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            user = process.stdout.readline().strip()
            assert user.startswith("dba_alice_")
            assert cli.role_exists(user)
            process.send_signal(signal.SIGTERM)
            result = finish(process, timeout=30)
        finally:
            process.kill()
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert_ran(result, path)
    assert not cli.role_exists(user)
    assert_nothing_left(cli, roles_before)


# --- errors are the same on both paths ---------------------------------------------------


@dataclass(frozen=True)
class Failure:
    args: tuple[str, ...]
    exit_code: int
    code: str
    message: str  # the start of the message
    hint: str


FAILURES = {
    "unknown role": Failure(
        ("exec", "demo", "--role", "nope", "--", "true"),
        11,
        "not_found",
        "target 'demo' has no role 'nope'",
        "roles on demo: readonly, readwrite",
    ),
    "unknown target": Failure(
        ("exec", "nope", "--role", "readonly", "--", "true"),
        11,
        "not_found",
        "there is no target 'nope'",
        "dbaccess targets lists the targets you may use",
    ),
    "reason needed": Failure(
        ("exec", "demo", "--role", "readwrite", "--", "true"),
        5,
        "denied",
        "rule 'dev-readwrite' needs approval, and approvers need a reason",
        "add --reason TEXT",
    ),
    "broker unreachable": Failure(
        ("exec", "demo", "--role", "readonly", "--", "true"),
        7,
        "broker_unreachable",
        "cannot reach the broker at ",
        "check that the broker runs there and the URL is right; to "
        "change it: dbaccess login --broker URL",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_errors_are_the_same_on_both_paths(cli: Cli, roles_before: set[str], case: str) -> None:
    failure = FAILURES[case]
    env: dict[str, str] = {}
    if case == "broker unreachable":
        broker = f"http://127.0.0.1:{closed_port()}"
        env["DBACCESS_BROKER"] = broker
        failure = Failure(
            failure.args,
            failure.exit_code,
            failure.code,
            failure.message + broker + ": ",
            failure.hint,
        )

    human = {p: run(cli, *failure.args, path=p, env=env) for p in PATHS}
    as_json = {p: run(cli, "--json", *failure.args, path=p, env=env) for p in PATHS}
    by_env = {p: run(cli, *failure.args, path=p, env={**env, "DBACCESS_JSON": "1"}) for p in PATHS}
    for p in PATHS:
        for result in (human[p], as_json[p], by_env[p]):
            assert_ran(result, p)
            assert result.returncode == failure.exit_code, (p, result.stdout, result.stderr)

    fast, full = human["fast"], human["full"]
    for result in (*human.values(), *as_json.values(), *by_env.values()):
        assert result.stdout == ""  # the command's, even with --json
    assert fast.text == full.text
    assert fast.text.startswith(f"error: {failure.message}"), fast.text
    assert fast.text.endswith(f"hint: {failure.hint}"), fast.text

    # exec's envelope is the last line on stderr
    envelopes = [
        json.loads(r.stderr.splitlines()[-1]) for r in (*as_json.values(), *by_env.values())
    ]
    assert all(e == envelopes[0] for e in envelopes), envelopes
    error = envelopes[0]["error"]
    assert set(envelopes[0]) == {"error"} and set(error) == {"code", "message", "hint"}
    assert error["code"] == failure.code
    assert error["message"].startswith(failure.message)
    assert error["hint"] == failure.hint
    assert f"error: {flat(error['message'])} hint: {error['hint']}" == fast.text
    for result in (*as_json.values(), *by_env.values()):
        assert "error:" not in result.stderr  # with JSON the error is the envelope only

    assert_nothing_left(cli, roles_before)


@pytest.mark.parametrize("spelling", [("-r=readonly",), ("--role", "readonly", "-d=5m")])
def test_short_options_with_equals_are_read_as_typer_reads_them(
    cli: Cli, spelling: tuple[str, ...]
) -> None:
    args = ("exec", "demo", *spelling, "--", "psql", "-At", "-c", "select 1")
    fast, full = (run(cli, *args, path=p) for p in PATHS)
    assert (fast.returncode, fast.stdout, fast.text) == (full.returncode, full.stdout, full.text)


@pytest.mark.parametrize("option", [("--reason", "x" * 501), ("--request", "0" * 37)])
def test_values_the_broker_refuses_are_reported_alike(
    cli: Cli, roles_before: set[str], option: tuple[str, str]
) -> None:
    args = ("exec", "demo", "--role", "readonly", *option, "--", "true")
    fast, full = (run(cli, *args, path=p) for p in PATHS)
    assert fast.returncode == 2 and fast.text.startswith("error: "), fast.stderr
    assert (full.returncode, full.text) == (fast.returncode, fast.text)
    assert_nothing_left(cli, roles_before)
    assert (full.returncode, full.text) == (fast.returncode, fast.text)


# --- anything unusual goes to the full CLI, before any side effect -----------------------


def test_a_nested_session_is_refused_on_both_paths(cli: Cli, roles_before: set[str]) -> None:
    env = {"DBACCESS_SESSION": "11111111-2222-3333-4444-555555555555"}
    args = ("exec", "demo", "--role", "readonly", "--", "psql", "-At", "-c", "select 1")
    results = {p: run(cli, *args, path=p, env=env) for p in PATHS}
    for p, result in results.items():
        assert result.returncode == 2, (p, result.stderr)
        assert result.full_cli, "the fast path must leave nested sessions to the full CLI"
        assert result.stdout == ""
    assert (
        results["fast"].text
        == results["full"].text
        == (
            "error: this shell already runs inside a dbaccess session "
            "hint: exit the current session first (nested sessions are refused)"
        )
    )
    as_json = run(cli, "--json", *args, env=env)
    assert as_json.returncode == 2 and as_json.stdout == ""
    assert json.loads(as_json.stderr.splitlines()[-1])["error"]["code"] == "usage"
    assert_nothing_left(cli, roles_before)


@both_paths
def test_help_and_unknown_flags_are_typers(cli: Cli, roles_before: set[str], path: str) -> None:
    for args in (
        ("exec", "--help"),
        ("exec", "demo", "--role", "readonly", "--help", "--", "psql"),
    ):
        shown = run(cli, *args, path=path)
        assert shown.returncode == 0, shown.stderr
        assert shown.full_cli
        assert shown.stdout.startswith("Usage: dbaccess exec"), shown.stdout
        assert "--role" in shown.stdout and "--no-wait" in shown.stdout
    bad = run(cli, "exec", "demo", "--role", "readonly", "--bogus", "--", "psql", path=path)
    assert bad.returncode == 2
    assert bad.full_cli
    assert "Usage: dbaccess exec" in bad.stderr and "No such option: --bogus" in bad.stderr
    assert bad.stdout == ""
    assert_nothing_left(cli, roles_before)


def test_after_a_crash_the_next_exec_sweeps_the_leftover_session(
    cli: Cli, roles_before: set[str]
) -> None:
    sleeper = 0
    with subprocess.Popen(
        command(
            "exec",
            "demo",
            "--role",
            "readonly",
            "--",
            "sh",
            "-c",
            'echo "$PGUSER $$"; exec sleep 60',
        ),
        env=environment(cli, "fast"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as crashed:
        try:
            assert crashed.stdout is not None
            user, pid = crashed.stdout.readline().split()
            sleeper = int(pid)
            crashed.kill()  # SIGKILL: no clean-up at all
            crashed.wait(timeout=10)
        finally:
            crashed.kill()
            if sleeper:
                os.kill(sleeper, signal.SIGKILL)  # the orphaned command
    assert len(session_dirs(cli)) == 1 and cli.role_exists(user)

    after = run(
        cli, "exec", "demo", "--role", "readonly", "--", "psql", "-At", "-c", "select current_user"
    )
    assert after.returncode == 0, after.stderr
    assert after.full_cli  # the sweep is the full CLI's job
    assert after.stdout.strip().startswith("dba_alice_") and after.stdout.strip() != user
    assert not cli.role_exists(user)  # the leftover session was revoked
    assert_nothing_left(cli, roles_before)


_SET_EXPIRY = """
import json, sys, keyring
raw = keyring.get_password("dbaccess", "profile:default")
if len(sys.argv) > 1:
    login = json.loads(raw)
    login["expires_at"] = float(sys.argv[1])
    keyring.set_password("dbaccess", "profile:default", json.dumps(login))
print(json.loads(raw)["expires_at"])
"""


def stored_expiry(cli: Cli, new: float | None = None) -> float:
    """The expiry of alice's stored login, read (and rewritten to ``new``) with keyring
    in the Secret Service the CLI uses."""
    done = subprocess.run(
        [sys.executable, "-c", _SET_EXPIRY, *([] if new is None else [repr(new)])],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def test_a_login_about_to_expire_is_refreshed_by_the_full_cli(
    cli: Cli, roles_before: set[str]
) -> None:
    query = ("exec", "demo", "--role", "readonly", "--", "psql", "-At", "-c", "select current_user")
    stored_expiry(cli, time.time() + 30)  # within the refresh margin
    refreshed = run(cli, *query)
    assert refreshed.returncode == 0, refreshed.stderr
    assert refreshed.full_cli  # the refresh is the full CLI's job
    assert refreshed.stdout.strip().startswith("dba_alice_")
    assert stored_expiry(cli) > time.time() + 600  # a fresh login was stored

    again = run(cli, *query)  # and the next run is fast again
    assert again.returncode == 0, again.stderr
    assert_ran(again, "fast")
    assert_nothing_left(cli, roles_before)


# --- approvals: the fast path waits for them itself ------------------------------------


@pytest.fixture(scope="module")
def leads(cli: Cli) -> Cli:
    """erin and frank, the approvers of readwrite for dev, logged in (one profile each)."""
    for person in ("erin", "frank"):
        result = cli.login(person, profile=person)
        assert result.returncode == 0, result.stderr
    return cli


def approve(cli: Cli, request_id: str) -> None:
    for person in ("erin", "frank"):
        done = cli.run("--profile", person, "--no-input", "approve", request_id)
        assert done.returncode == 0, done.stderr


def my_request(cli: Cli, request_id: str) -> dict[str, object]:
    listed = cli.run("--json", "requests", "--mine")
    assert listed.returncode == 0, listed.stderr
    return next(r for r in json.loads(listed.stdout)["data"] if r["id"] == request_id)


def test_no_wait_names_the_request_and_the_request_redeems_on_the_fast_path(
    leads: Cli, roles_before: set[str]
) -> None:
    cli = leads
    reason = f"fast no-wait {time.time_ns()}"
    envelopes = {}
    for p in PATHS:
        pending = run(
            cli,
            "--no-input",
            "--json",
            "exec",
            "demo",
            "--role",
            "readwrite",
            "--reason",
            reason,
            "--no-wait",
            "--",
            "true",
            path=p,
        )
        assert pending.returncode == 6, pending.stderr + pending.stdout  # approval pending
        if p == "fast":
            assert_handed_over(pending)
        else:
            assert_ran(pending, p)
        assert pending.stdout == ""  # exec's envelope is the last line on stderr
        envelopes[p] = json.loads(pending.stderr.splitlines()[-1])
    request_id = re.fullmatch(
        rf"request ({_UUID}) waits for 2 approval\(s\) from leads",
        envelopes["fast"]["error"]["message"],
    )
    assert request_id, envelopes
    rid = request_id.group(1)
    assert envelopes["fast"] == {
        "error": {
            "code": "approval_pending",
            "message": f"request {rid} waits for 2 approval(s) from leads",
            "hint": f"once approved: dbaccess exec demo --role readwrite --request {rid} -- ...",
        }
    }
    other = envelopes["full"]["error"]["message"].split()[1]
    assert json.loads(json.dumps(envelopes["full"]).replace(other, rid)) == envelopes["fast"]
    opened = my_request(cli, rid)
    assert (opened["state"], opened["target"], opened["role"], opened["reason"]) == (
        "pending",
        "demo",
        "readwrite",
        reason,
    )
    assert session_dirs(cli) == []

    approve(cli, rid)
    used = run(
        cli,
        "exec",
        "demo",
        "--role",
        "readwrite",
        "--request",
        rid,
        "--",
        "psql",
        "-At",
        "-c",
        "select current_user",
    )
    assert used.returncode == 0, used.stderr
    assert_ran(used, "fast")
    assert used.stdout.strip().startswith("dba_alice_")
    assert not cli.role_exists(used.stdout.strip())
    for p in PATHS:  # one session per request, on either path
        again = run(
            cli, "exec", "demo", "--role", "readwrite", "--request", rid, "--", "true", path=p
        )
        assert again.returncode == 5, again.stderr
        assert "was already used" in again.text
    assert_nothing_left(cli, roles_before)


class Drained:
    """A process's stderr, read line by line in a thread while the test goes on."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Iterator[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on stderr: {split_importtime(self.text())[0]}")

    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, process: subprocess.Popen[str], timeout: float = 60) -> Run:
        assert process.stdout is not None
        out = process.stdout.read()
        process.wait(timeout=timeout)
        self._thread.join(timeout=10)
        stderr, imported = split_importtime(self.text())
        return Run(process.returncode, out, stderr, imported)


def test_waiting_for_approvers_continues_on_the_fast_path(
    leads: Cli, roles_before: set[str]
) -> None:
    cli = leads
    with subprocess.Popen(
        command(
            "--no-input",
            "exec",
            "demo",
            "--role",
            "readwrite",
            "--reason",
            "fast wait",
            "--",
            "psql",
            "-qAt",
            "-c",
            "select current_user",
        ),
        env=environment(cli, "fast"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        try:
            stderr = Drained(waiting)
            rid = stderr.wait_for(rf"approvers run: dbaccess approve ({_UUID})").group(1)
            assert my_request(cli, rid)["state"] == "pending"
            assert waiting.poll() is None  # still waiting
            approve(cli, rid)
            result = stderr.finish(waiting, timeout=60)
        finally:
            waiting.kill()
    assert result.returncode == 0, result.stderr
    user = result.stdout.strip()
    assert user.startswith("dba_alice_")
    assert_handed_over(result)
    assert f"connected as {user} to demo (readwrite)" in result.text
    assert result.text.endswith("dbaccess: session revoked, local files removed")
    assert my_request(cli, rid)["state"] != "pending"
    assert not cli.role_exists(user)
    assert_nothing_left(cli, roles_before)
