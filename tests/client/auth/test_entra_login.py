"""Entra ID login through msal's device flow, against the real oidc-provider served the
way Entra is: https (a throwaway CA, trusted through SSL_CERT_FILE) with the issuer at
/{tenant}/v2.0. The broker runs in-process; the CLI through typer's runner."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import IdentitySection, load_settings
from dbaccess.cli.app import app
from dbaccess.client.auth import entra
from dbaccess.client.auth.token_store import load_login, save_login
from dbaccess.sandbox.idp import OidcProvider, approve_device_code
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from dbaccess.sandbox.tls import make_certificates
from tests.inprocess import BROKER, route_cli_to

pytestmark = pytest.mark.integration


@pytest.fixture
def entra_idp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OidcProvider]:
    certs = make_certificates(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # trust the test CA, verify as usual
    with OidcProvider(tmp_path / "idp", tls=certs, path="/tenant-7/v2.0") as idp:
        yield idp


@pytest.fixture
def entra_broker(
    stack: Stack, entra_idp: OidcProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    monkeypatch.delenv("DBACCESS_BROKER", raising=False)
    settings = load_settings(stack.broker_config)
    identity = IdentitySection(
        kind="entra",
        issuer=entra_idp.issuer,
        client_id=entra_idp.client_id,
        scopes=["openid", "profile", "email", "groups", "offline_access"],
    )
    settings = settings.model_copy(
        update={
            "identity": identity,
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'entra.db'}"}
            ),
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        http = route_cli_to(client, monkeypatch)
        yield
        http.close()


@pytest.fixture
def approves_as(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    who: list[str] = []
    login = entra.device_login

    def device_login(
        issuer: str,
        client_id: str,
        scopes: list[str],
        http: httpx.Client,
        show_code: Callable[[Any], None],
        poll: float | None = None,
    ) -> Any:
        def show_and_approve(code: Any) -> None:
            show_code(code)
            threading.Thread(
                target=approve_device_code,
                args=(code.verification_uri_complete, who[0]),
                daemon=True,
            ).start()

        return login(issuer, client_id, scopes, http, show_and_approve, 1)

    monkeypatch.setattr(entra, "device_login", device_login)
    return who


def run(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, ["--json", *args], prog_name="dbaccess")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, json.loads(lines[-1]) if lines else result.stdout


def test_entra_login_refresh_and_a_session(
    entra_broker: None, approves_as: list[str], entra_idp: OidcProvider, stack: Stack
) -> None:
    code, config = 0, httpx.get(entra_idp.issuer + "/.well-known/openid-configuration").json()
    assert config["issuer"].startswith("https://127.0.0.1:")  # really https, really verified
    approves_as.append("bob")
    code, body = run("login", "--broker", BROKER)
    assert code == 0, body
    assert body["data"]["subject"] == "bob"
    stored = load_login("default")
    assert stored is not None and stored.kind == "entra" and stored.issuer == entra_idp.issuer
    code, me = run("whoami")
    assert code == 0 and "dba" in me["data"]["groups"]

    # The ID token is about to expire: the next command refreshes it through msal.
    save_login("default", stored.__class__(**{**stored.__dict__, "expires_at": 0.0}))
    code, shown = run("creds", "demo", "--role", "readonly", "--reveal", "--duration", "5m")
    assert code == 0, shown
    refreshed = load_login("default")
    assert refreshed is not None and refreshed.expires_at > 0
    # refreshed through msal: the provider rotated the refresh token (the ID token, issued
    # within the same second for the same claims, may be byte-identical)
    assert refreshed.refresh_token and refreshed.refresh_token != stored.refresh_token
    code, _ = run("revoke", shown["data"]["id"])
    assert code == 0 and shown["data"]["db_user"] not in stack.managed_users()


def test_entra_identity_settings() -> None:
    from_tenant = IdentitySection(kind="entra", tenant="contoso.onmicrosoft.com", client_id="x")
    assert from_tenant.issuer == "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
    assert entra.authority(from_tenant.issuer) == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    )
    with pytest.raises(ValueError, match="needs tenant"):
        IdentitySection(kind="entra", issuer="http://127.0.0.1:1/t/v2.0", client_id="x")
    with pytest.raises(ValueError, match="issuer is required"):
        IdentitySection(client_id="x")
