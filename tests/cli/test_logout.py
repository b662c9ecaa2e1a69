"""logout forgets the login even when the identity provider cannot revoke its token."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from dbaccess.cli.app import app
from dbaccess.client import context as api
from dbaccess.client.auth.token_store import StoredLogin, load_login, save_login
from tests.inprocess import Shared


def test_an_unreachable_identity_provider_does_not_keep_you_logged_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    monkeypatch.setattr(api, "http_client", lambda: Shared(http))
    save_login(
        "default",
        StoredLogin(
            issuer="https://idp.example.com",
            client_id="dbaccess",
            scopes=["openid"],
            id_token="a.b.c",
            refresh_token="refresh-me",
            expires_at=0,
            subject="alice",
            email=None,
        ),
    )
    result = CliRunner().invoke(app, ["--json", "logout"], prog_name="dbaccess")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["data"] == {
        "profile": "default",
        "logged_out": True,
        "revoked": [],
        "refresh_token_revoked": False,
    }
    assert "could not be revoked at the identity provider" in result.stderr
    assert "refresh-me" not in result.stderr + result.stdout
    assert load_login("default") is None
