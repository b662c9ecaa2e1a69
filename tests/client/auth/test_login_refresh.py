"""Login through the real provider; an expiring token is refreshed silently and rotated."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from dbaccess import __version__
from dbaccess.client.auth.device_flow import DeviceCode
from dbaccess.client.auth.login import bearer_token, device_login
from dbaccess.client.auth.token_store import load_login, save_login
from dbaccess.errors import AuthError
from dbaccess.sandbox.idp import OidcProvider, approve_device_code
from dbaccess.wire import PublicConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def short_lived_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    # ID tokens live 30 s: inside the CLI's 60 s refresh margin, so every use refreshes.
    with OidcProvider(tmp_path_factory.mktemp("idp"), id_token_ttl=30) as provider:
        yield provider


def test_login_then_silent_refresh(
    short_lived_idp: OidcProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBACCESS_DEVICE_POLL_INTERVAL", "0.1")
    config = PublicConfig(
        issuer=short_lived_idp.issuer,
        client_id=short_lived_idp.client_id,
        scopes=["openid", "email", "groups", "offline_access"],
        broker_version=__version__,
    )
    shown: list[DeviceCode] = []

    def show(code: DeviceCode) -> None:
        shown.append(code)
        assert code.verification_uri_complete is not None
        threading.Thread(
            target=approve_device_code, args=(code.verification_uri_complete, "alice")
        ).start()

    with httpx.Client() as http:
        first = device_login("work", config, http, show)
        assert first.email == "alice@example.com"
        assert load_login("work") == first
        refreshed = bearer_token("work", http)
        # a refresh happened: the provider rotated the refresh token (the ID token may be
        # byte-identical when issued within the same second)
        assert refreshed.refresh_token not in (None, first.refresh_token)
        assert refreshed.expires_at >= first.expires_at
        assert load_login("work") == refreshed
        # the rotated-away refresh token is dead: a login holding it must log in again
        save_login("work", first)
        with pytest.raises(AuthError, match="session expired — run dbaccess login"):
            bearer_token("work", http)
    assert len(shown) == 1


def test_not_logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    with httpx.Client() as http, pytest.raises(AuthError, match="not logged in"):
        bearer_token("nobody", http)
