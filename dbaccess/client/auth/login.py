"""Log in through the broker's identity provider, and keep the bearer token fresh."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from dbaccess.client.auth.device_flow import DEFAULT_INTERVAL, DeviceCode, DeviceFlow, TokenSet
from dbaccess.client.auth.token_store import (
    REFRESH_MARGIN,
    StoredLogin,
    ensure_storage,
    load_login,
    save_login,
)
from dbaccess.errors import AuthError
from dbaccess.wire import PublicConfig

if TYPE_CHECKING:
    from dbaccess.client.config import ProfileFile


def _default_interval() -> float:
    # Used only when the provider sends no ``interval`` (RFC 8628 says 5 s then).
    value = os.environ.get("DBACCESS_DEVICE_POLL_INTERVAL")
    return float(value) if value else DEFAULT_INTERVAL


def device_login(
    profile: str,
    config: PublicConfig,
    http: httpx.Client,
    show_code: Callable[[DeviceCode], None],
    on_wait: Callable[[float], None] | None = None,
    *,
    profiles: ProfileFile | None = None,
) -> StoredLogin:
    """Run the device flow (RFC 8628 client, or msal for Entra ID), store the result in
    the keyring and return it (``profiles``: the invocation's config.toml)."""
    ensure_storage(profile, profiles)
    if config.kind == "entra":
        from dbaccess.client.auth import entra

        poll = os.environ.get("DBACCESS_DEVICE_POLL_INTERVAL")
        tokens = entra.device_login(
            config.issuer,
            config.client_id,
            config.scopes,
            http,
            show_code,
            float(poll) if poll else None,
        )
    else:
        flow = DeviceFlow(
            config.issuer,
            config.client_id,
            config.scopes,
            http=http,
            default_interval=_default_interval(),
        )
        code = flow.start()
        show_code(code)
        tokens = flow.poll(code, on_wait)
    login = _stored(config.issuer, config.client_id, config.scopes, tokens, config.kind)
    save_login(profile, login, profiles)
    return login


def bearer_token(
    profile: str, http: httpx.Client, *, profiles: ProfileFile | None = None
) -> StoredLogin:
    """The stored login, refreshed silently when it is about to expire."""
    login = load_login(profile, profiles)
    if login is None:
        raise AuthError("you are not logged in", hint="dbaccess login")
    if login.expires_at - REFRESH_MARGIN > time.time():
        return login
    if not login.refresh_token:
        raise AuthError("session expired — run dbaccess login", hint="dbaccess login")
    if login.kind == "entra":
        from dbaccess.client.auth import entra

        tokens = entra.refresh(
            login.issuer, login.client_id, login.scopes, login.refresh_token, http
        )
    else:
        tokens = DeviceFlow(login.issuer, login.client_id, login.scopes, http=http).refresh(
            login.refresh_token
        )
    refreshed = _stored(login.issuer, login.client_id, login.scopes, tokens, login.kind)
    save_login(profile, refreshed, profiles)
    return refreshed


def _stored(
    issuer: str, client_id: str, scopes: list[str], tokens: TokenSet, kind: str = "oidc"
) -> StoredLogin:
    return StoredLogin(
        issuer=issuer,
        client_id=client_id,
        scopes=list(scopes),
        id_token=tokens.id_token,
        refresh_token=tokens.refresh_token,
        expires_at=tokens.expires_at,
        subject=tokens.subject,
        email=tokens.email,
        kind=kind,
    )
