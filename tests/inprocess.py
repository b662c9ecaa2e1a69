"""The CLI's one HTTP client, pointed at a broker app running in-process (Starlette's
TestClient transport) while every other host (the identity provider) is reached over
the network, as in real use."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from dbaccess.client import context as api

BROKER = "http://testserver"


class Shared:
    """Hands one client to every ``with api.http_client() as http`` block, unclosed."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __enter__(self) -> httpx.Client:
        return self.client

    def __exit__(self, *exc: object) -> None:
        pass


def route_cli_to(broker: TestClient, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    """Make the CLI reach ``broker`` at BROKER; returns the client (close it after)."""
    http = httpx.Client(mounts={BROKER: broker._transport}, timeout=30)
    monkeypatch.setattr(api, "http_client", lambda: Shared(http))
    return http


def save_cli_login(issuer: str, client_id: str, id_token: str, broker: str = BROKER) -> None:
    """The CLI's default profile at ``broker``, logged in with ``id_token`` (no device
    flow: the token is one the test provider issued)."""
    import jwt

    from dbaccess.client.auth.token_store import StoredLogin, save_login
    from dbaccess.client.config import Profile, ProfileFile

    claims = jwt.decode(id_token, options={"verify_signature": False})
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", broker)
    profiles.save()
    save_login(
        "default",
        StoredLogin(
            issuer=issuer,
            client_id=client_id,
            scopes=["openid"],
            id_token=id_token,
            refresh_token=None,
            expires_at=claims["exp"],
            subject=claims["sub"],
            email=claims["email"],
        ),
    )
