"""The four commands that open a session build one request and refuse a bad one alike —
before the login, the broker or a prompt is reached (the broker named here does not
answer: a call to it would exit 7)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dbaccess.cli.app import app

LONG_REASON = "x" * 501
COMMANDS = {
    "connect": ["connect", "demo", "--role", "readonly"],
    "exec": ["exec", "demo", "--role", "readonly"],
    "creds": ["creds", "demo", "--role", "readonly", "--reveal"],
    "breakglass": ["breakglass", "demo", "--incident", "INC-1"],
}
TAIL = {"exec": ["--", "true"]}


@pytest.fixture(autouse=True)
def silent_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBACCESS_BROKER", "http://127.0.0.1:9")


def refused(*args: str) -> tuple[int, dict[str, str]]:
    result = CliRunner().invoke(app, ["--json", "--no-input", *args], prog_name="dbaccess")
    out = result.stdout.strip() or result.stderr.strip()
    return result.exit_code, json.loads(out.splitlines()[-1])["error"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_reason_the_broker_would_refuse_is_the_same_usage_error(command: str) -> None:
    code, error = refused(*COMMANDS[command], "--reason", LONG_REASON, *TAIL.get(command, []))
    assert code == 2 and error["code"] == "usage"
    if command == "breakglass":  # a required field there
        assert error["message"] == "reason: String should have at most 500 characters"
    else:
        assert error["message"] == (
            "reason: Value should have at most 500 items after validation, not 501"
        )


@pytest.mark.parametrize("command", [*COMMANDS, "renew"])
def test_a_bad_duration_is_named_by_its_option(command: str) -> None:
    asked = ["renew", "s-1"] if command == "renew" else [*COMMANDS[command], "--reason", "r"]
    code, error = refused(*asked, "--duration", "soon", *TAIL.get(command, []))
    assert code == 2 and error["message"] == (
        "--duration: 'soon' is not a duration; use e.g. 90s, 15m, 1h or 1h30m"
    )


def test_a_breakglass_incident_too_long_is_a_usage_error_not_a_traceback() -> None:
    code, error = refused("breakglass", "demo", "--incident", "I" * 101, "--reason", "disk")
    assert code == 2 and error["code"] == "usage"
    assert error["message"] == "incident: String should have at most 100 characters"
