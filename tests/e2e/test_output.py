"""What a user or a script sees, through the real CLI against the real stack: results on
stdout and messages on stderr, the one JSON envelope (usage errors and session commands
too), one timestamp format, the documented exit codes, and an error of its own — naming
the active profile — for each way of not reaching the broker."""

from __future__ import annotations

import http.server
import json
import os
import pty
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess.sandbox.processes import free_port, wait_until
from dbaccess.sandbox.stack import Stack
from dbaccess.sandbox.tls import make_certificates
from tests.e2e.conftest import DBACCESS, Cli
from tests.e2e.test_fast_exec import PATHS, assert_ran, closed_port, flat, run
from tests.terminal import read_until

pytestmark = pytest.mark.integration

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def envelope_on_stderr(stderr: str) -> Any:
    """connect/exec/breakglass: stdout is the child's, their envelope is stderr's last line."""
    return json.loads(stderr.strip().splitlines()[-1])


# --- results on stdout, whole, in pipes and files -----------------------------------------


def test_tables_go_to_stdout_and_pipes_and_files_get_long_values_whole(
    cli: Cli, tmp_path: Path
) -> None:
    reason = "JIRA-4242 " + "checking why the nightly order export is slow " * 3
    made = cli.run(
        "--json", "creds", "demo", "--role", "readonly", "--reveal", "--reason", reason.strip()
    )
    assert made.returncode == 0, made.stderr
    session = json.loads(made.stdout)["data"]
    try:
        listed = cli.run("sessions")  # stdout is a pipe, as in `dbaccess sessions | cat`
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if session["id"] in line)
        # one line per session, nothing cut at 80 columns, no box drawing to split on
        assert row.split() == [
            session["id"],
            "demo",
            "readonly",
            session["db_user"],
            "active",
            *session["expires_at"].replace("T", " ").rstrip("Z").split(),
            "UTC",
        ]
        assert session["id"] not in listed.stderr

        auditor = cli.login("dave", profile="auditor")
        assert auditor.returncode == 0, auditor.stderr
        saved = tmp_path / "audit.txt"
        with saved.open("w") as out:  # `dbaccess audit > file`
            done = subprocess.run(
                [*DBACCESS, "--profile", "auditor", "audit", "--user", "alice"],
                env=cli.env,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        assert done.returncode == 0, done.stderr
        text = saved.read_text()
        assert text.splitlines()[0].split()[:3] == ["#", "when", "event"]
        assert any(
            reason.strip() in line and session["db_user"] in line for line in text.splitlines()
        ), text
        assert reason.strip() not in done.stderr
    finally:
        revoked = cli.run("revoke", session["id"])
    # "revoked ..." is the result (stdout); messages such as exec's stay on stderr
    assert revoked.stdout.startswith(f"revoked {session['id']} ({session['db_user']})")
    ran = cli.run("exec", "demo", "--role", "readonly", "--", "psql", "-At", "-c", "select 1")
    assert ran.returncode == 0 and ran.stdout == "1\n", ran.stderr
    assert "connected as" in ran.stderr and "session revoked" in ran.stderr


# --- the one envelope: usage errors, and the session commands -----------------------------


USAGE_ERRORS = {
    "unknown option": (("sessions", "--bogus"), "No such option: --bogus", "dbaccess sessions"),
    "missing argument": (("renew",), "Missing argument 'session_id'.", "dbaccess renew"),
    "bad value": (("--timeout", "soon", "sessions"), "Invalid value for '--timeout'", "dbaccess"),
    "unknown command": (("sesions",), "No such command 'sesions'.", "dbaccess"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_are_the_envelope_under_json(cli: Cli, case: str) -> None:
    args, message, command = USAGE_ERRORS[case]
    for result in (
        cli.run("--json", *args),
        subprocess.run(
            [*DBACCESS, *args],
            env={**cli.env, "DBACCESS_JSON": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        ),
    ):
        assert result.returncode == 2, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "usage" and error["message"].startswith(message), error
        assert error["hint"] == f"{command} --help"
        assert result.stderr == ""
    human = cli.run(*args)
    assert human.returncode == 2 and human.stdout == ""
    assert message in human.stderr and "--help' for help" in human.stderr


@pytest.mark.parametrize("path", list(PATHS))
def test_exec_reports_its_session_in_one_envelope_without_touching_stdout(
    cli: Cli, path: str
) -> None:
    result = run(
        cli,
        "--json",
        "exec",
        "demo",
        "--role",
        "readonly",
        "--",
        "sh",
        "-c",
        'psql -At -c "select current_user"; exit 3',
        path=path,
    )
    assert result.returncode == 3, result.stderr
    assert_ran(result, path)
    user = result.stdout.strip()  # the command's output, alone
    assert user.startswith("dba_alice_")
    outcome = envelope_on_stderr(result.stderr)["data"]
    assert outcome["db_user"] == user and outcome["exit_code"] == 3
    assert (outcome["target"], outcome["role"], outcome["engine"], outcome["kind"]) == (
        "demo",
        "readonly",
        "postgres",
        "session",
    )
    assert RFC3339_UTC.fullmatch(outcome["expires_at"]) and outcome["warnings"] == []
    assert not cli.role_exists(user)

    # an error is the envelope there too, the same on both paths
    failed = run(cli, "--json", "exec", "nope", "--role", "readonly", "--", "true", path=path)
    assert failed.returncode == 11 and failed.stdout == ""
    assert envelope_on_stderr(failed.stderr)["error"]["code"] == "not_found"
    usage = run(cli, "--json", "exec", "demo", "--", "true", path=path)
    assert usage.returncode == 2 and usage.stdout == ""
    assert envelope_on_stderr(usage.stderr)["error"]["message"] == "Missing option '--role' / '-r'."


def test_connect_and_breakglass_report_their_session_too(cli: Cli) -> None:
    result = cli.run(
        "--json", "connect", "demo", "--role", "readonly", "--", "-At", "-c", "select 40 + 2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"
    outcome = envelope_on_stderr(result.stderr)["data"]
    assert outcome["exit_code"] == 0 and outcome["db_user"].startswith("dba_alice_")

    assert cli.login("carol", profile="oncall").returncode == 0
    drill = cli.run(
        "--json",
        "--profile",
        "oncall",
        "breakglass",
        "demo",
        "--incident",
        "INC-7",
        "--reason",
        "drill of the envelope",
        "--drill",
        "--client",
        "true",
    )
    assert drill.returncode == 0, drill.stderr
    assert drill.stdout == ""
    outcome = envelope_on_stderr(drill.stderr)["data"]
    assert outcome["kind"] == "breakglass" and outcome["db_user"].startswith("dba_carol_")


# --- one timestamp format ------------------------------------------------------------------


def timestamps(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every field that is, or looks like, a point in time, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}"
            if key == "at" or key.endswith(("_at", "_until")):
                yield path, item
            elif not isinstance(item, dict | list):
                if isinstance(item, str) and LOOKS_LIKE_TIME.match(item):
                    yield path, item
            if isinstance(item, dict | list):
                yield from timestamps(item, path)
    elif isinstance(value, list):
        for number, item in enumerate(value):
            yield from timestamps(item, f"{where}[{number}]")


def test_every_timestamp_in_json_is_rfc3339_utc(cli: Cli) -> None:
    outputs: dict[str, Any] = {}
    login = cli.login("alice")
    assert login.returncode == 0, login.stderr
    outputs["login"] = [json.loads(line) for line in login.stdout.splitlines()]
    made = cli.run(
        "--json", "creds", "demo", "--role", "readonly", "--reveal", "--reason", "timestamps"
    )
    outputs["creds"] = json.loads(made.stdout)
    session = outputs["creds"]["data"]["id"]
    pending = cli.run(
        "--json", "exec", "demo", "--role", "readwrite", "--reason", "t", "--no-wait", "--", "true"
    )
    outputs["exec --no-wait"] = envelope_on_stderr(pending.stderr)
    cli.withdraw_open_requests()  # asking again would reuse it, in other tests too
    for command in (
        ("whoami",),
        ("targets",),
        ("sessions",),
        ("renew", session, "--duration", "10m"),
        ("requests", "--mine"),
        ("revoke", session),
        ("--profile", "auditor", "audit", "--limit", "50"),
        ("--profile", "auditor", "review"),
    ):
        if command[0] == "--profile" and cli.login("dave", profile="auditor").returncode:
            pytest.fail("dave could not log in")
        result = cli.run("--json", *command)
        assert result.returncode == 0, (command, result.stderr)
        outputs[" ".join(command)] = json.loads(result.stdout)
    ran = cli.run("--json", "exec", "demo", "--role", "readonly", "--", "true")
    outputs["exec"] = envelope_on_stderr(ran.stderr)

    found = [
        (name, path, value)
        for name, output in outputs.items()
        for path, value in timestamps(output)
    ]
    names = {name for name, _, _ in found}
    assert {
        "login",
        "creds",
        "whoami",
        "sessions",
        f"renew {session} --duration 10m",
        "exec",
        "requests --mine",
        "--profile auditor audit --limit 50",
    } <= names
    wrong = [
        (name, path, value)
        for name, path, value in found
        if value is not None and not (isinstance(value, str) and RFC3339_UTC.fullmatch(value))
    ]
    assert wrong == [], wrong


# --- exit codes: the target database failing is 9 -----------------------------------------


@pytest.fixture(scope="module")
def broker_with_a_dead_database(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second broker on the same identity provider, its demo target on a closed port."""
    home = tmp_path_factory.mktemp("dead-db-broker")
    config = home / "broker.toml"
    config.write_text(
        stack.broker_config.read_text().replace(
            f"port = {stack.postgres.port}\n", f"port = {closed_port()}\n"
        )
    )
    port = free_port()
    broker = stack.spawn_broker(port, home / "broker.log", config=config)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert broker.poll() is None, (home / "broker.log").read_text()
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=30, what="the broker with a dead database")
        yield url
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def test_a_database_that_is_down_exits_9_on_both_paths(
    cli: Cli, broker_with_a_dead_database: str
) -> None:
    env = {"DBACCESS_BROKER": broker_with_a_dead_database}
    args = ("exec", "demo", "--role", "readonly", "--", "true")
    results = {p: run(cli, *args, path=p, env=env) for p in PATHS}
    for p, result in results.items():
        assert result.returncode == 9, (p, result.stderr)
        assert_ran(result, p)
    assert results["fast"].text == results["full"].text
    assert results["fast"].text.startswith("error: "), results["fast"].text
    as_json = run(cli, "--json", *args, env=env)
    assert as_json.returncode == 9
    assert envelope_on_stderr(as_json.stderr)["error"]["code"] == "database_error"
    # the broker itself works: what needs no database still answers
    assert run(cli, "targets", env=env).returncode == 0


# --- not reaching the broker: each way has its own message and hint -----------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    delay = 0.0
    seen: list[dict[str, str]]  # the headers of every request, per server (serve())

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        self.seen.append(dict(self.headers.items()))
        time.sleep(self.delay)
        body = b'{"error": {"code": "oops", "message": "reached", "hint": null}}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, *args: object) -> None:
        pass  # a refused TLS handshake is what the tests want


def serve(delay: float = 0.0, tls: ssl.SSLContext | None = None) -> http.server.HTTPServer:
    handler = type("Handler", (_Handler,), {"delay": delay, "seen": []})
    server = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        # the handshake on the first read, in the handler: a refused one closes its socket
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def untrusted_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An https server whose certificate comes from a CA nobody trusts; yields its URL and
    that CA (to show that trusting it is the fix)."""
    certs = make_certificates(tmp_path_factory.mktemp("untrusted-ca"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert, certs.key)
    server = serve(tls=context)
    yield f"https://127.0.0.1:{server.server_address[1]}", certs.ca
    server.shutdown()
    server.server_close()


def test_an_untrusted_certificate_says_so_on_both_paths(
    cli: Cli, untrusted_broker: tuple[str, Path]
) -> None:
    url, ca = untrusted_broker
    import certifi

    env = {"DBACCESS_BROKER": url, "SSL_CERT_FILE": certifi.where()}
    args = ("exec", "demo", "--role", "readonly", "--", "true")
    results = {p: run(cli, *args, path=p, env=env) for p in PATHS}
    for p, result in results.items():
        assert result.returncode == 7, (p, result.stderr)
        assert_ran(result, p)
    assert results["fast"].text == results["full"].text
    assert results["fast"].text.startswith(
        f"error: the broker at {url} presented a TLS certificate this machine does not trust"
    )
    assert results["fast"].text.endswith(
        "hint: if your organisation has its own certificate authority, point SSL_CERT_FILE at "
        "its CA bundle: export SSL_CERT_FILE=/path/to/ca.pem"
    )
    as_json = run(cli, "--json", *args, env=env)
    assert envelope_on_stderr(as_json.stderr)["error"]["code"] == "broker_untrusted"

    login = cli.run("--json", "login", "--broker", url)
    assert login.returncode == 7
    assert json.loads(login.stdout)["error"]["code"] == "broker_untrusted"
    trusted = subprocess.run(
        [*DBACCESS, "login", "--broker", url],
        env={**cli.env, "SSL_CERT_FILE": str(ca)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert trusted.returncode == 8 and "error: reached" in trusted.stderr  # the hint's fix


@pytest.mark.parametrize("path", list(PATHS))
def test_an_unknown_host_and_a_refused_connection_are_told_apart(cli: Cli, path: str) -> None:
    args = ("exec", "demo", "--role", "readonly", "--", "true")
    dns = run(cli, *args, path=path, env={"DBACCESS_BROKER": "http://broker.invalid"})
    assert dns.returncode == 7, dns.stderr
    assert dns.text.startswith(
        "error: cannot reach the broker at http://broker.invalid: the "
        "name broker.invalid does not resolve (DNS) hint: check the host"
    )
    refused = run(
        cli, *args, path=path, env={"DBACCESS_BROKER": f"http://127.0.0.1:{closed_port()}"}
    )
    assert refused.returncode == 7
    assert refused.text.endswith(
        ": connection refused hint: check that the broker runs there "
        "and the URL is right; to change it: dbaccess login --broker "
        "URL"
    )


@pytest.fixture(scope="module")
def slow_broker() -> Iterator[str]:
    server = serve(delay=5)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("how", ["flag", "variable"])
def test_timeout_applies_to_broker_calls_on_both_paths(
    cli: Cli, slow_broker: str, path: str, how: str
) -> None:
    env = {"DBACCESS_BROKER": slow_broker}
    args: tuple[str, ...] = ("exec", "demo", "--role", "readonly", "--", "true")
    if how == "flag":
        args = ("--timeout", "1", *args)
    else:
        env["DBACCESS_TIMEOUT"] = "1"
    started = time.monotonic()
    result = run(cli, *args, path=path, env=env)
    assert time.monotonic() - started < 4.5, "the 5 s answer was waited for"
    assert result.returncode == 7, result.stderr
    assert_ran(result, path)
    assert result.text.startswith(
        f"error: the broker at {slow_broker} did not answer within 1 s hint: it may be overloaded"
    ), result.text


@pytest.mark.parametrize("path", list(PATHS))
def test_both_paths_tell_the_broker_how_long_they_wait(cli: Cli, path: str) -> None:
    """The broker revokes a session it could not hand out within this (Dbaccess-Timeout,
    services/target_guard.py) rather than give a password to a client that gave up."""
    server = serve()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        args = ("--timeout", "7.5", "exec", "demo", "--role", "readonly", "--", "true")
        result = run(cli, *args, path=path, env={"DBACCESS_BROKER": url})
        assert_ran(result, path)
        assert result.returncode != 0 and "reached" in result.text
        seen = server.RequestHandlerClass.seen  # type: ignore[attr-defined]
        assert seen and all(h.get("Dbaccess-Timeout") == "7.5" for h in seen), seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", list(PATHS))
def test_a_slow_broker_shows_a_spinner_on_a_terminal(cli: Cli, slow_broker: str, path: str) -> None:
    controller, terminal = pty.openpty()
    env = {**cli.env, **PATHS[path], "DBACCESS_BROKER": slow_broker, "DBACCESS_TIMEOUT": "3"}
    with subprocess.Popen(
        [*DBACCESS, "--no-input", "exec", "demo", "--role", "readonly", "--", "true"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
    ) as process:
        os.close(terminal)
        try:
            waiting = "waiting for the broker (POST /v1/sessions)"
            shown = read_until(controller, re.escape(waiting), 10, must=False)
            assert "waiting for the broker (POST /v1/sessions)" in shown, shown
            rest = read_until(controller, "hint:", 10, must=False)
            assert process.wait(timeout=10) == 7
        finally:
            process.kill()
            os.close(controller)
    assert "did not answer within 3 s" in rest


# --- hints name the active profile; a mistyped profile is named as such -------------------


@pytest.mark.parametrize("path", list(PATHS))
def test_hints_name_the_active_profile_on_both_paths(cli: Cli, path: str) -> None:
    assert cli.login("alice", profile="work").returncode == 0
    result = run(
        cli, "--profile", "work", "exec", "nope", "--role", "readonly", "--", "true", path=path
    )
    assert result.returncode == 11, result.stderr
    assert_ran(result, path)
    assert result.text.endswith(
        "hint: dbaccess --profile work targets lists the targets you may use"
    )
    fresh = cli.run("--profile", "never-logged-in", "sessions")
    assert fresh.returncode == 4
    assert flat(fresh.stderr).endswith("hint: dbaccess --profile never-logged-in login")


@pytest.mark.parametrize("path", list(PATHS))
def test_a_mistyped_profile_lists_the_known_ones(cli: Cli, path: str) -> None:
    env = {k: v for k, v in cli.env.items() if k != "DBACCESS_BROKER"}
    env.update(PATHS[path])
    for args in (
        ("--profile", "defualt", "sessions"),
        ("--profile", "defualt", "exec", "demo", "--role", "readonly", "--", "true"),
    ):
        done = subprocess.run(
            [*DBACCESS, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 11, done.stderr
        text = flat(done.stderr)
        assert re.match(
            r"error: there is no profile 'defualt' in \S+config.toml; known "
            r"profiles: [a-z, -]*\bdefault\b",
            text,
        ), text
        assert "no broker is configured" not in text
        assert text.endswith("dbaccess --profile defualt login --broker URL")
