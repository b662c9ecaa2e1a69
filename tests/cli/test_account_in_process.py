"""login, whoami, logout and profiles through typer's runner, with the real broker app
in-process: the broker is reached through Starlette's TestClient transport, the identity
provider (real oidc-provider) over the network, as a person would approve the code."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.cli.app import app
from dbaccess.client.auth import device_flow
from dbaccess.client.auth.device_flow import DeviceFlow
from dbaccess.client.auth.token_store import load_login
from dbaccess.client.config import ProfileFile
from dbaccess.errors import AuthError
from dbaccess.sandbox.idp import approve_device_code
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from tests.inprocess import BROKER, route_cli_to

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    monkeypatch.setenv("DBACCESS_DEVICE_POLL_INTERVAL", "0.2")
    monkeypatch.delenv("DBACCESS_BROKER", raising=False)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'accounts.db'}"}
            )
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        http = route_cli_to(client, monkeypatch)
        yield
        http.close()


@pytest.fixture
def person_approves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Whoever is named in the returned list approves the next device code at the provider
    (a person at a browser), while the CLI polls."""
    who: list[str] = []
    start = device_flow.DeviceFlow.start

    def start_and_get_approved(self: device_flow.DeviceFlow) -> device_flow.DeviceCode:
        code = start(self)
        assert code.verification_uri_complete
        threading.Thread(
            target=approve_device_code, args=(code.verification_uri_complete, who[0]), daemon=True
        ).start()
        return code

    monkeypatch.setattr(device_flow.DeviceFlow, "start", start_and_get_approved)
    return who


def run(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, ["--json", *args], prog_name="dbaccess")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, json.loads(lines[-1]) if lines else None


def test_login_whoami_logout(broker: None, person_approves: list[str], stack: Stack) -> None:
    code, before = run("whoami")
    assert code == 2 and before["error"]["hint"].startswith("dbaccess login --broker")
    person_approves.append("bob")
    code, body = run("login", "--broker", BROKER)
    assert code == 0, body
    assert (body["data"]["subject"], body["data"]["broker"]) == ("bob", BROKER)
    assert ProfileFile.load().profiles["default"].broker == BROKER  # remembered
    code, me = run("whoami")
    assert code == 0 and me["data"]["email"] == "bob@example.com"
    assert "dba" in me["data"]["groups"]

    code, shown = run("creds", "demo", "--role", "readonly", "--reveal", "--duration", "5m")
    assert code == 0
    user = shown["data"]["db_user"]
    assert user in stack.managed_users()
    stored = load_login("default")
    assert stored is not None and stored.refresh_token
    code, out = run("logout", "--revoke")
    assert code == 0 and out["data"]["logged_out"] is True
    assert out["data"]["revoked"] == [shown["data"]["id"]]
    assert user not in stack.managed_users()
    # a copy of the refresh token (a backup, another machine) is worth nothing after logout
    assert out["data"]["refresh_token_revoked"] is True
    with httpx.Client() as http, pytest.raises(AuthError, match="session expired"):
        DeviceFlow(stored.issuer, stored.client_id, stored.scopes, http=http).refresh(
            stored.refresh_token
        )
    code, after = run("whoami")
    assert code == 4 and after["error"]["hint"] == "dbaccess login"


def test_profiles_in_process(broker: None, person_approves: list[str]) -> None:
    code, added = run("profiles", "add", "work", "--broker", BROKER, "--breakglass-target", "demo")
    assert code == 0 and added["data"]["breakglass_target"] == "demo"
    code, bad = run("profiles", "add", "evil", "--broker", "ftp://example.com")
    assert code == 2 and "evil" not in ProfileFile.load().profiles
    person_approves.append("carol")
    code, body = run("--profile", "work", "login")
    assert code == 0 and body["data"]["profile"] == "work"
    code, used = run("profiles", "use", "work")
    assert code == 0 and ProfileFile.load().current == "work"
    code, me = run("whoami")  # the current profile's login
    assert code == 0 and me["data"]["subject"] == "carol"
    code, listed = run("profiles")
    assert code == 0
    assert [(p["name"], p["current"]) for p in listed["data"] if p["name"] == "work"] == [
        ("work", True)
    ]
    code, removed = run("profiles", "remove", "work")
    assert code == 0 and "work" not in ProfileFile.load().profiles
    code, missing = run("profiles", "use", "work")
    assert code == 11  # NOT_FOUND
