"""``GET /v1/inventory`` and ``dbaccess inventory``: the standing accounts of the targets,
for auditors only, live session users left out — through the broker in-process with real
tokens and the suite's real PostgreSQL and MariaDB targets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jwt
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.cli.app import app as cli
from dbaccess.client import context as cli_api
from dbaccess.client.auth.token_store import StoredLogin, save_login
from dbaccess.client.config import Profile, ProfileFile
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER, PROVISIONER_ENV, Stack
from tests.inprocess import Shared

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {name: device_tokens(stack.idp, name)["id_token"] for name in ("alice", "dave")}


@pytest.fixture
def api(stack: Stack, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'broker.db'}"}
            )
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        yield client


def headers(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def test_auditors_see_every_standing_account_but_live_sessions(
    api: TestClient, stack: Stack, tokens: dict[str, str]
) -> None:
    made = api.post(
        "/v1/sessions",
        headers=headers(tokens, "alice"),
        json={"target": "demo", "role": "readonly"},
    )
    assert made.status_code == 201, made.text
    session_user = made.json()["db_user"]
    try:
        answer = api.get(
            "/v1/inventory", params={"target": "demo"}, headers=headers(tokens, "dave")
        )
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["errors"] == {}
        found = {a["account"]: a for a in report["accounts"]}
        assert {a["target"] for a in report["accounts"]} == {"demo"}
        assert session_user not in found  # live: what dbaccess is for
        admin = found[stack.postgres.admin_user]
        assert admin["status"] == "finding" and "has SUPERUSER" in admin["risks"]
        assert found[PROVISIONER]["status"] == "provisioner"
        # every target at once, MariaDB's accounts named user@host
        everything = api.get("/v1/inventory", headers=headers(tokens, "dave")).json()
        assert {"demo", "shop"} <= {a["target"] for a in everything["accounts"]}
        assert any(
            a["target"] == "shop" and a["account"].startswith("root@")
            for a in everything["accounts"]
        )
    finally:
        api.delete(f"/v1/sessions/{made.json()['id']}", headers=headers(tokens, "alice"))


def test_only_auditors_and_only_known_targets(api: TestClient, tokens: dict[str, str]) -> None:
    denied = api.get("/v1/inventory", headers=headers(tokens, "alice"))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "denied"
    assert "auditor group" in denied.json()["error"]["message"]
    unknown = api.get("/v1/inventory", params={"target": "nope"}, headers=headers(tokens, "dave"))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_target"
    long = api.get("/v1/inventory", params={"target": "x" * 65}, headers=headers(tokens, "dave"))
    assert long.status_code == 422


def test_the_cli_prints_the_report_and_exits_12_on_findings(
    api: TestClient, stack: Stack, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_api, "http_client", lambda: Shared(api))
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", "http://testserver")
    profiles.save()
    token = tokens["dave"]
    claims = jwt.decode(token, options={"verify_signature": False})
    save_login(
        "default",
        StoredLogin(
            issuer=stack.idp.issuer, client_id=stack.idp.client_id, scopes=["openid"],
            id_token=token, refresh_token=None, expires_at=claims["exp"], subject="dave",
        ),
    )  # fmt: skip
    human = CliRunner().invoke(cli, ["inventory", "demo"], prog_name="dbaccess")
    assert human.exit_code == 12, human.output
    lines = human.stdout.splitlines()
    assert lines[0].startswith("demo: ") and "finding(s)" in lines[0]
    assert any(line.split()[:2] == ["FINDING", stack.postgres.admin_user] for line in lines)
    as_json = CliRunner().invoke(cli, ["--json", "inventory", "demo"], prog_name="dbaccess")
    assert as_json.exit_code == 12
    data = json.loads(as_json.stdout)["data"]
    assert any(a["status"] == "provisioner" for a in data["accounts"])
