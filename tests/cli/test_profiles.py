"""``dbaccess profiles`` through typer's runner (in-process, isolated config dir)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dbaccess.cli.app import app
from dbaccess.client.auth.token_store import StoredLogin, load_login, save_login

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), prog_name="dbaccess")
    return result.exit_code, result.output


def test_add_use_list_remove() -> None:
    assert run("profiles")[1].strip() == "no profiles yet: dbaccess login --broker URL"
    assert run("profiles", "add", "work", "--broker", "https://broker.example.com/")[0] == 0
    assert run("profiles", "add", "stage", "--broker", "http://127.0.0.1:8080")[0] == 0
    assert run("profiles", "use", "stage")[0] == 0
    code, out = run("--json", "profiles")
    assert code == 0
    assert json.loads(out)["data"] == [
        {"name": "stage", "broker": "http://127.0.0.1:8080", "current": True},
        {"name": "work", "broker": "https://broker.example.com", "current": False},
    ]
    save_login(
        "stage",
        StoredLogin(
            issuer="i",
            client_id="c",
            scopes=[],
            id_token="t",
            refresh_token=None,
            expires_at=0,
            subject="s",
        ),
    )
    assert run("profiles", "remove", "stage")[0] == 0
    assert load_login("stage") is None  # its login went with it
    code, out = run("--json", "profiles")
    assert json.loads(out)["data"] == [
        {"name": "work", "broker": "https://broker.example.com", "current": False}
    ]


def test_errors_say_what_to_do() -> None:
    code, out = run("profiles", "use", "nope")
    assert code == 11 and "there is no profile 'nope'" in out
    assert "dbaccess profiles add nope --broker URL" in out
    code, out = run("profiles", "add", "bad name", "--broker", "https://x")
    assert code == 2 and "may only use letters, digits" in out
    code, out = run("profiles", "add", "ok", "--broker", "ftp://x")
    assert code == 2 and "must start with https://" in out
