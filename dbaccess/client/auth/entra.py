"""Microsoft Entra ID login through msal's device flow (broker identity ``kind = "entra"``).

msal speaks to the tenant's authority — the issuer without its ``/v2.0`` suffix, e.g.
``https://login.microsoftonline.com/{tenant}`` — over our own httpx client, so proxies,
``SSL_CERT_FILE`` and the tests' injected transport apply as for every other call. The
result is stored like any other login (one small keyring entry); refreshing goes through
msal too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from dbaccess.client.auth.device_flow import DeviceCode, TokenSet
from dbaccess.errors import AuthError

# msal adds these itself and refuses them in a request.
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})


class _MsalHttp:
    """msal's small HTTP client interface (``get``/``post``/``close``) over httpx."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> httpx.Response:
        return self._http.get(url, params=params, headers=headers)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **_: Any
    ) -> httpx.Response:
        return self._http.post(url, params=params, data=data, headers=headers)

    def close(self) -> None:  # the client belongs to the caller
        pass


def authority(issuer: str) -> str:
    return issuer.rstrip("/").removesuffix("/v2.0")


def _app(issuer: str, client_id: str, http: httpx.Client) -> Any:
    import msal  # ~60 ms: only for Entra logins

    try:
        return msal.PublicClientApplication(
            client_id,
            authority=authority(issuer),
            http_client=_MsalHttp(http),
            # The authority comes from the broker's configuration, not from the user.
            instance_discovery=False,
        )
    except (ValueError, httpx.HTTPError) as exc:
        raise AuthError(f"cannot use the Entra authority {authority(issuer)}: {exc}") from None


def _scopes(scopes: list[str]) -> list[str]:
    return [s for s in scopes if s not in RESERVED_SCOPES]


def device_login(
    issuer: str,
    client_id: str,
    scopes: list[str],
    http: httpx.Client,
    show_code: Callable[[DeviceCode], None],
    poll_interval: float | None = None,
) -> TokenSet:
    app = _app(issuer, client_id, http)
    flow = app.initiate_device_flow(scopes=_scopes(scopes))
    if "user_code" not in flow:
        raise AuthError(f"Entra refused to start a login: {_describe(flow)}")
    if poll_interval is not None:
        flow["interval"] = max(1, int(poll_interval))  # msal waits whole seconds
    show_code(
        DeviceCode(
            device_code=flow["device_code"],
            user_code=flow["user_code"],
            verification_uri=flow["verification_uri"],
            verification_uri_complete=flow.get("verification_uri_complete"),
            expires_in=int(flow.get("expires_in", 900)),
            interval=float(flow.get("interval", 5)),
        )
    )
    return _token_set(app.acquire_token_by_device_flow(flow))


def refresh(
    issuer: str, client_id: str, scopes: list[str], refresh_token: str, http: httpx.Client
) -> TokenSet:
    app = _app(issuer, client_id, http)
    result = app.acquire_token_by_refresh_token(refresh_token, scopes=_scopes(scopes))
    if "id_token" not in result:
        raise AuthError("session expired — run dbaccess login", hint="dbaccess login")
    return _token_set(result)


def _token_set(result: dict[str, Any]) -> TokenSet:
    if "id_token" not in result:
        error = result.get("error")
        if error == "authorization_declined" or error == "access_denied":
            raise AuthError("the login was denied at the identity provider")
        if error == "expired_token":
            raise AuthError("the login code expired before it was approved", hint="dbaccess login")
        raise AuthError(f"login failed: {_describe(result)}")
    claims = result.get("id_token_claims") or {}
    return TokenSet(
        id_token=result["id_token"],
        refresh_token=result.get("refresh_token"),
        expires_at=float(claims.get("exp", 0)),
        subject=str(claims.get("sub", "")),
        email=claims.get("email") or claims.get("preferred_username"),
    )


def _describe(body: dict[str, Any]) -> str:
    return str(body.get("error_description") or body.get("error") or "no details")
