"""OAuth 2.0 device authorization grant (RFC 8628) for any OpenID Connect provider.

Works where no browser can run (SSH, containers): the user opens the URL on any device
and types the code. Polling honours the server's ``interval``, adds 5 s on ``slow_down``
and stops on ``expired_token`` and ``access_denied``. Refresh tokens are rotated when the
provider rotates them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dbaccess.errors import AuthError, BrokerUnreachable

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: float

    def __repr__(self) -> str:
        return f"DeviceCode(user_code={self.user_code!r}, uri={self.verification_uri!r})"


@dataclass(frozen=True)
class TokenSet:
    """What the provider returned. ``bearer`` is what the broker accepts (the ID token)."""

    id_token: str
    refresh_token: str | None
    expires_at: float  # epoch seconds, from the ID token's exp
    subject: str
    email: str | None = None

    def __repr__(self) -> str:
        return f"TokenSet(subject={self.subject!r}, expires_at={self.expires_at})"

    @property
    def bearer(self) -> str:
        return self.id_token


def unverified_claims(jwt: str) -> dict[str, Any]:
    """Read a JWT's claims without checking the signature (the broker checks it)."""
    try:
        payload = jwt.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise AuthError("the identity provider returned a malformed ID token") from exc
    if not isinstance(data, dict):
        raise AuthError("the identity provider returned a malformed ID token")
    return data


class DeviceFlow:
    def __init__(
        self,
        issuer: str,
        client_id: str,
        scopes: list[str],
        *,
        http: httpx.Client,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        default_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.scopes = scopes
        self._http = http
        self._sleep = sleep
        self._clock = clock
        self._default_interval = default_interval
        self._endpoints: dict[str, Any] | None = None

    def endpoints(self) -> dict[str, Any]:
        if self._endpoints is None:
            url = self.issuer + "/.well-known/openid-configuration"
            doc = self._get_json(url)
            if "device_authorization_endpoint" not in doc:
                raise AuthError(
                    f"the identity provider {self.issuer} does not offer the device flow",
                    hint="enable the device authorization grant for this client at the IdP",
                )
            self._endpoints = doc
        return self._endpoints

    def start(self) -> DeviceCode:
        body = self._post(
            self.endpoints()["device_authorization_endpoint"],
            {"client_id": self.client_id, "scope": " ".join(self.scopes)},
        )
        if "error" in body:
            raise AuthError(f"the identity provider refused to start a login: {_describe(body)}")
        return DeviceCode(
            device_code=body["device_code"],
            user_code=body["user_code"],
            verification_uri=body.get("verification_uri") or body["verification_url"],
            verification_uri_complete=body.get("verification_uri_complete"),
            expires_in=int(body.get("expires_in", 600)),
            interval=float(body.get("interval") or self._default_interval),
        )

    def poll(self, code: DeviceCode, on_wait: Callable[[float], None] | None = None) -> TokenSet:
        """Poll the token endpoint until the user approves, denies, or the code expires."""
        interval = code.interval
        deadline = self._clock() + code.expires_in
        token_endpoint = self.endpoints()["token_endpoint"]
        while True:
            body = self._post(
                token_endpoint,
                {
                    "grant_type": DEVICE_GRANT,
                    "device_code": code.device_code,
                    "client_id": self.client_id,
                },
            )
            error = body.get("error")
            if error is None:
                return self._token_set(body)
            if error == "authorization_pending":
                pass
            elif error == "slow_down":
                interval += SLOW_DOWN_STEP
            elif error == "expired_token":
                raise AuthError(
                    "the login code expired before it was approved", hint="dbaccess login"
                )
            elif error == "access_denied":
                raise AuthError("the login was denied at the identity provider")
            else:
                raise AuthError(f"login failed: {_describe(body)}", hint="dbaccess login")
            if self._clock() + interval > deadline:
                raise AuthError(
                    "the login code expired before it was approved", hint="dbaccess login"
                )
            if on_wait is not None:
                on_wait(interval)
            self._sleep(interval)

    def refresh(self, refresh_token: str) -> TokenSet:
        body = self._post(
            self.endpoints()["token_endpoint"],
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.client_id,
            },
        )
        if "error" in body:
            raise AuthError("session expired — run dbaccess login", hint="dbaccess login")
        tokens = self._token_set(body)
        if tokens.refresh_token is None:  # provider did not rotate: keep using the old one
            tokens = TokenSet(
                tokens.id_token, refresh_token, tokens.expires_at, tokens.subject, tokens.email
            )
        return tokens

    def revoke(self, refresh_token: str) -> bool:
        """Revoke ``refresh_token`` at the provider (RFC 7009), so a copy of it is worth
        nothing after logout. False when the provider offers no revocation endpoint."""
        endpoint = self.endpoints().get("revocation_endpoint")
        if not isinstance(endpoint, str):
            return False
        data = {
            "token": refresh_token,
            "token_type_hint": "refresh_token",
            "client_id": self.client_id,
        }
        try:
            response = self._http.post(endpoint, data=data)
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(
                f"cannot reach the identity provider at {endpoint}: {exc}"
            ) from None
        if response.status_code != 200:  # RFC 7009: 200 whether or not the token was valid
            raise AuthError(
                f"the identity provider answered {response.status_code} to the "
                "revocation of the refresh token"
            )
        return True

    def _token_set(self, body: dict[str, Any]) -> TokenSet:
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise AuthError("the identity provider returned no ID token (is 'openid' a scope?)")
        claims = unverified_claims(id_token)
        return TokenSet(
            id_token=id_token,
            refresh_token=body.get("refresh_token"),
            expires_at=float(claims.get("exp", 0)),
            subject=str(claims.get("sub", "")),
            email=claims.get("email"),
        )

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(f"cannot reach the identity provider at {url}: {exc}") from None
        if response.status_code != 200:
            raise AuthError(f"{url} answered {response.status_code}")
        return _json(response)

    def _post(self, url: str, data: dict[str, str]) -> dict[str, Any]:
        try:
            response = self._http.post(url, data=data, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise BrokerUnreachable(f"cannot reach the identity provider at {url}: {exc}") from None
        return _json(response)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise AuthError(
            f"the identity provider answered {response.status_code} with no JSON"
        ) from None
    if not isinstance(data, dict):
        raise AuthError("the identity provider answered with unexpected JSON")
    return data


def _describe(body: dict[str, Any]) -> str:
    return str(body.get("error_description") or body.get("error"))
