"""Every session command through typer's runner, with the real broker app in-process
(Starlette's TestClient as the CLI's HTTP client), real PostgreSQL/MariaDB and real tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.cli.app import app
from dbaccess.client import context as api
from dbaccess.client.auth.token_store import StoredLogin, save_login
from dbaccess.client.config import Profile, ProfileFile
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from tests.inprocess import Shared, save_cli_login

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def alice_token(stack: Stack) -> str:
    return device_tokens(stack.idp, "alice")["id_token"]


@pytest.fixture
def broker(
    stack: Stack, alice_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'in-process.db'}"}
            )
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        monkeypatch.setattr(api, "http_client", lambda: Shared(client))
        save_cli_login(stack.idp.issuer, stack.idp.client_id, alice_token, "http://testserver")
        yield client


# Their stdout is the child's: the envelope is the last line on stderr.
CHILD_COMMANDS = {"connect", "exec", "breakglass"}


def run(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, ["--json", *args], prog_name="dbaccess")
    out = result.stdout
    if CHILD_COMMANDS & set(args):
        assert out == "", out  # nothing of ours where the child's output goes
        out = result.stderr
    body = json.loads(out.splitlines()[-1]) if out.strip() else None
    return result.exit_code, body


def test_session_commands(broker: TestClient, stack: Stack) -> None:
    code, me = run("whoami")
    assert code == 0 and me["data"]["email"] == "alice@example.com"
    code, allowed = run("targets")
    assert {(t["target"], t["role"], t["approvals"]) for t in allowed["data"]} == {
        ("demo", "readonly", 0),
        ("shop", "readonly", 0),
        ("demo", "readwrite", 2),
        ("shop", "readwrite", 2),
    }

    code, shown = run("creds", "demo", "--role", "readonly", "--reveal", "--duration", "10m")
    assert code == 0
    session = shown["data"]
    assert session["db_user"] in stack.managed_users()

    code, listed = run("sessions")
    assert [s["id"] for s in listed["data"]] == [session["id"]]
    code, renewed = run("renew", session["id"], "--duration", "20m")
    assert code == 0 and renewed["data"]["expires_at"] > session["expires_at"]
    code, refused = run("renew", session["id"], "--duration", "5h")
    assert code == 5 and "allows at most 1h" in refused["error"]["message"]

    code, revoked = run("revoke", "--all")
    assert code == 0 and [s["state"] for s in revoked["data"]] == ["revoked"]
    assert session["db_user"] not in stack.managed_users()
    code, nothing = run("sessions")
    assert nothing["data"] == []


def test_exec_and_denials(broker: TestClient, stack: Stack) -> None:
    before = set(stack.managed_users())
    result = CliRunner().invoke(
        app,
        ["exec", "demo", "--role", "readonly", "--", "sh", "-c", 'test -f "$PGPASSFILE" && exit 3'],
        prog_name="dbaccess",
    )
    assert result.exit_code == 3  # the command's own code, after the session was revoked
    assert set(stack.managed_users()) == before
    result = CliRunner().invoke(
        app, ["connect", "demo", "--role", "readonly", "--client", "true"], prog_name="dbaccess"
    )
    assert result.exit_code == 0, result.output  # the client ran, then the session ended
    assert set(stack.managed_users()) == before
    code, version = run("version")
    assert code == 0 and version["data"]["version"]
    code, denied = run("connect", "demo", "--role", "readwrite")
    assert code == 5 and denied["error"]["code"] == "denied"
    code, unknown = run("connect", "nowhere", "--role", "readonly")
    assert code == 11 and "there is no target 'nowhere'" in unknown["error"]["message"]
    assert set(stack.managed_users()) == before


def test_inherited_variables_are_scrubbed_and_sessions_do_not_nest(
    broker: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGHOST", "evil.example.com")
    monkeypatch.setenv("PGPASSWORD", "an-old-shared-password")
    monkeypatch.setenv("MYSQL_PWD", "another-old-password")
    result = CliRunner().invoke(
        app,
        [
            "exec",
            "demo",
            "--role",
            "readonly",
            "--",
            "sh",
            "-c",
            'test "$PGHOST" = 127.0.0.1 && test -z "$PGPASSWORD" && test -z "$MYSQL_PWD" '
            '&& test -n "$DBACCESS_SESSION"',
        ],
        prog_name="dbaccess",
    )
    assert result.exit_code == 0
    monkeypatch.setenv("DBACCESS_SESSION", "an-outer-session")
    code, nested = run("connect", "demo", "--role", "readonly")
    assert code == 2 and "already runs inside a dbaccess session" in nested["error"]["message"]


def test_audit_is_for_auditors(broker: TestClient, stack: Stack) -> None:
    code, denied = run("audit")
    assert code == 5 and "needs an auditor group" in denied["error"]["message"]
    code, made = run("creds", "demo", "--role", "readonly", "--reveal", "--reason", "INC-9")
    assert code == 0
    run("revoke", made["data"]["id"])

    dave = device_tokens(stack.idp, "dave")["id_token"]
    claims = jwt.decode(dave, options={"verify_signature": False})
    save_login(
        "default",
        StoredLogin(
            issuer=stack.idp.issuer,
            client_id=stack.idp.client_id,
            scopes=["openid"],
            id_token=dave,
            refresh_token=None,
            expires_at=claims["exp"],
            subject="dave",
        ),
    )
    code, trail = run("audit", "--user", "alice", "--target", "demo")
    assert code == 0
    events = [(r["event"], r["detail"].get("db_user")) for r in trail["data"]]
    user = made["data"]["db_user"]
    assert ("session.requested", user) in events and ("session.revoked", user) in events
    requested = next(
        r
        for r in trail["data"]
        if r["event"] == "session.requested" and r["detail"]["db_user"] == user
    )
    assert requested["detail"]["reason"] == "INC-9"
    assert requested["detail"]["source"] == "testclient"
    code, granted_only = run("audit", "--type", "session.granted")
    assert code == 0 and {r["event"] for r in granted_only["data"]} == {"session.granted"}
    code, bad = run("audit", "--since", "last tuesday")
    assert code == 2 and "not an ISO date" in bad["error"]["message"]


def _log_in_as(stack: Stack, person: str, profile: str) -> None:
    token = device_tokens(stack.idp, person)["id_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    profiles = ProfileFile.load()
    profiles.profiles[profile] = Profile(profile, "http://testserver")
    profiles.save()
    save_login(
        profile,
        StoredLogin(
            issuer=stack.idp.issuer,
            client_id=stack.idp.client_id,
            scopes=["openid"],
            id_token=token,
            refresh_token=None,
            expires_at=claims["exp"],
            subject=person,
        ),
    )


def test_approval_and_breakglass_commands(broker: TestClient, stack: Stack) -> None:
    for person in ("erin", "frank", "carol", "dave"):
        _log_in_as(stack, person, person)
    code, pending = run("connect", "demo", "--role", "readwrite", "--reason", "fix", "--no-wait")
    assert code == 6 and pending["error"]["code"] == "approval_pending"
    request_id = pending["error"]["hint"].rsplit(" ", 1)[-1]
    code, mine = run("requests", "--mine")
    assert code == 0 and [r["id"] for r in mine["data"]] == [request_id]
    code, listed = run("--profile", "erin", "requests")
    assert code == 0 and request_id in [r["id"] for r in listed["data"]]
    code, own = run("approve", request_id)
    assert code == 5  # alice is no approver (and never of her own request)
    code, first = run("--profile", "erin", "approve", request_id)
    assert code == 0 and first["data"]["state"] == "pending"
    code, second = run("--profile", "frank", "approve", request_id)
    assert code == 0 and second["data"]["state"] == "approved"
    before = set(stack.managed_users())
    result = CliRunner().invoke(
        app,
        [
            "exec",
            "demo",
            "--role",
            "readwrite",
            "--request",
            request_id,
            "--",
            "sh",
            "-c",
            'test -n "$PGPASSFILE"',
        ],
        prog_name="dbaccess",
    )
    assert result.exit_code == 0, result.output
    assert set(stack.managed_users()) == before  # used, then revoked

    code, again = run("connect", "demo", "--role", "readwrite", "--reason", "more", "--no-wait")
    code, denied = run(
        "--profile", "frank", "deny", again["error"]["hint"].rsplit(" ", 1)[-1], "--reason", "no"
    )
    assert code == 0 and denied["data"]["state"] == "denied"

    result = CliRunner().invoke(
        app,
        [
            "--profile",
            "carol",
            "--no-input",
            "breakglass",
            "demo",
            "--incident",
            "INC-88",
            "--reason",
            "in-process drill",
            "--drill",
            "--client",
            "true",
        ],
        prog_name="dbaccess",
    )
    assert result.exit_code == 0, result.output
    code, reviews = run("--profile", "dave", "review")
    review = next(r for r in reviews["data"] if r["incident"] == "INC-88")
    assert review["drill"] is True
    code, self_review = run("--profile", "carol", "review", review["id"], "--note", "fine")
    assert code == 5
    code, closed = run("--profile", "dave", "review", review["id"], "--note", "drill went well")
    assert code == 0 and closed["data"]["reviewed_by"] == "dave"


@pytest.mark.parametrize(
    "command",
    [
        ["connect", "demo", "--role", "readonly"],
        ["exec", "demo", "--role", "readonly"],
        ["creds", "demo", "--role", "readonly", "--reveal"],
        ["breakglass", "demo", "--incident", "INC-1", "--reason", "r"],
        ["renew", "0000"],
    ],
)
def test_absurd_durations_are_a_usage_error(
    broker: TestClient, stack: Stack, command: list[str]
) -> None:
    """Once a date overflow (a traceback); now a usage error naming the bound, nothing made."""
    before = set(stack.managed_users())
    extra = ["--", "true"] if command[0] == "exec" else []
    for duration in ("367d", "99999999999d"):
        code, body = run(*command, "--duration", duration, *extra)
        assert code == 2, body
        assert "longer than 366d" in body["error"]["message"]
    assert set(stack.managed_users()) == before


@pytest.mark.parametrize(
    "args",
    [
        ("connect", "demo", "--role", "readonly", "--client", "true"),
        ("exec", "demo", "--role", "readonly", "--", "true"),
    ],
    ids=["connect", "exec"],
)
def test_one_session_reads_config_toml_once(
    broker: TestClient, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The invocation reads config.toml once and passes it down: the insecure-storage
    notice, the profile's name, broker and clients, and the login's token storage (it was
    read six times per session)."""
    reads: list[Path] = []
    read_text = Path.read_text

    def counted(path: Path, *more: Any, **options: Any) -> str:
        if path.name == "config.toml":
            reads.append(path)
        return read_text(path, *more, **options)

    monkeypatch.setattr(Path, "read_text", counted)
    code, outcome = run(*args)
    assert code == 0 and outcome["data"]["exit_code"] == 0, outcome
    assert len(reads) == 1, reads
