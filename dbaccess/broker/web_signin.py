"""The web pages' sign-in (``[web]``): OpenID Connect's authorization code flow with PKCE
(RFC 7636, S256) against the broker's identity provider, and the two signed cookies it
leaves in the browser — one for the few minutes of a sign-in (state, nonce, the PKCE
verifier, where to go back to) and one for the session after it (the verified person).

No framework here: routes/web.py carries these values between the browser and this
module. Both cookies are HMAC-SHA256 signed with ``[web] cookie_key``, each under its own
label, so one can never be taken for the other; every replica with the same key reads
what another signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from dbaccess.broker.identity import IdentityUnavailable, InvalidToken, Principal, TokenVerifier
from dbaccess.broker.keys import KeyKeeper, get_json
from dbaccess.broker.settings import IdentitySection, WebSection

LOGIN_SECONDS = 600  # a sign-in left at the provider's page longer than this starts again
MAX_COOKIE = 8192
EXCHANGE_TIMEOUT = 10.0
DISCOVERY_SECONDS = 3600.0


class SignInFailed(Exception):
    """The sign-in did not end with a verified person; the text says why, for the page."""


class ProviderUnreachable(SignInFailed):
    """The provider did not answer (discovery or the token exchange): try again later."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CookieSigner:
    """Signs small JSON values under a label, with an expiry."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"dbaccess web cookies\0" + key).digest()

    def _mac(self, label: str, data: bytes) -> str:
        return _b64(hmac.new(self._key, label.encode() + b"\0" + data, hashlib.sha256).digest())

    def sign(self, label: str, value: dict[str, Any], seconds: float) -> str:
        body = {**value, "exp": int(time.time() + seconds)}
        data = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{data}.{self._mac(label, data.encode())}"

    def read(self, label: str, cookie: str | None) -> dict[str, Any] | None:
        """The value of a cookie signed under ``label`` and not expired; else None."""
        if not cookie or len(cookie) > MAX_COOKIE or cookie.count(".") != 1:
            return None
        data, mac = cookie.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(label, data.encode()).encode()):
            return None
        try:
            body = json.loads(_unb64(data))
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("exp"), int):
            return None
        if body["exp"] < time.time():
            return None
        return body

    def token(self, label: str, value: str) -> str:
        """A value's MAC under ``label`` (the CSRF token of a session id)."""
        return self._mac(label, value.encode())


class WebSessions:
    """The session cookie: the person a sign-in verified, until ``seconds`` have passed."""

    def __init__(self, key: bytes | None = None, seconds: float = 8 * 3600) -> None:
        self.signer = CookieSigner(key or secrets.token_bytes(32))
        self.seconds = seconds

    def issue(self, who: Principal) -> str:
        return self.signer.sign(
            "session",
            {
                "sub": who.subject,
                "email": who.email,
                "name": who.name,
                "groups": sorted(who.groups),
                "email_verified": who.email_verified,
                "sid": secrets.token_hex(16),
            },
            self.seconds,
        )

    def read(self, cookie: str | None) -> tuple[Principal, str] | None:
        """The person and session id of a valid, unexpired session cookie; else None."""
        body = self.signer.read("session", cookie)
        if body is None:
            return None
        try:
            who = Principal(
                subject=str(body["sub"]),
                email=body["email"],
                name=body["name"],
                groups=frozenset(body["groups"]),
                email_verified=bool(body["email_verified"]),
            )
            return who, str(body["sid"])
        except (KeyError, TypeError):
            return None

    def csrf(self, sid: str) -> str:
        return self.signer.token("csrf", sid)


@dataclass(frozen=True)
class Pending:
    """A sign-in between the redirect to the provider and its return."""

    state: str
    nonce: str
    verifier: str
    next: str


# Segments each end with their "/" but the last: no nested repetition, so a refused path
# fails in one pass (``(?:[...]+/?)*`` backtracks exponentially on "/web/aaaa…!")
_OUR_PAGE = re.compile(r"/web/(?:[A-Za-z0-9_-]+/)*[A-Za-z0-9_-]*")


def local_page(path: str | None) -> str:
    """``path`` if it is one of the web pages (/web/ and the paths under it, in plain
    letters, digits, - and _), else /web/: the page to return to after a sign-in is never
    another site, and never a path that a browser or proxy could read otherwise
    (``//host``, backslashes, percent-encoding, dot segments)."""
    if path and len(path) <= 200 and _OUR_PAGE.fullmatch(path):
        return path
    return "/web/"


class SignIn:
    """The authorization code flow for one ``[web]`` section and its provider. Blocking
    (the provider's discovery document and token endpoint): call it off the event loop."""

    def __init__(
        self,
        identity: IdentitySection,
        web: WebSection,
        *,
        keeper: KeyKeeper | None = None,
        http_get: Callable[[str], dict[str, Any]] = get_json,
    ) -> None:
        self.web = web
        self._issuer = identity.issuer
        self._scopes = " ".join(s for s in identity.scopes if s != "offline_access")
        if "openid" not in self._scopes.split():
            self._scopes = "openid " + self._scopes
        # The ID token of this sign-in names the web client as its audience (and only it):
        # a verifier of its own, so the API's verifier never takes such a token.
        self.verifier = TokenVerifier(
            identity.model_copy(update={"client_id": web.client_id, "audiences": []}),
            keeper=keeper,
            http_get=http_get,
        )
        self._http_get = http_get
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _endpoints(self) -> dict[str, Any]:
        with self._lock:
            if self._discovery is not None and time.monotonic() < self._discovery[0]:
                return self._discovery[1]
        url = self._issuer + "/.well-known/openid-configuration"
        try:
            document = self._http_get(url)
        except (ConnectionError, ValueError) as exc:
            raise ProviderUnreachable(f"the identity provider did not answer: {exc}") from None
        for name in ("authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ProviderUnreachable(f"the identity provider's {name} is missing")
        with self._lock:
            self._discovery = (time.monotonic() + DISCOVERY_SECONDS, document)
        return document

    def begin(self, next_page: str | None) -> tuple[str, Pending]:
        """Where to send the browser, and what to keep until it comes back."""
        pending = Pending(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),  # 64 characters: RFC 7636 wants 43 to 128
            next=local_page(next_page),
        )
        challenge = _b64(hashlib.sha256(pending.verifier.encode()).digest())
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.web.client_id,
                "redirect_uri": self.web.redirect_uri,
                "scope": self._scopes,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(self._endpoints()["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", pending

    def finish(self, pending: Pending, code: str) -> Principal:
        """The person the provider's code stands for: the code exchanged with the PKCE
        verifier, the ID token verified (issuer, audience, signature, expiry) and its
        nonce the one this sign-in sent."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.web.redirect_uri,
            "client_id": self.web.client_id,
            "code_verifier": pending.verifier,
        }
        secret = self.web.client_secret
        if secret is not None:
            form["client_secret"] = secret.read()
        endpoint = str(self._endpoints()["token_endpoint"])
        try:
            answer = httpx.post(endpoint, data=form, timeout=EXCHANGE_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ProviderUnreachable(
                f"the identity provider's token endpoint did not answer: {type(exc).__name__}"
            ) from None
        try:
            tokens = answer.json()
        except ValueError:
            tokens = None
        if not isinstance(tokens, dict):
            raise SignInFailed(f"the identity provider answered HTTP {answer.status_code}")
        if answer.status_code != 200 or "id_token" not in tokens:
            error = tokens.get("error_description") or tokens.get("error") or "no ID token"
            raise SignInFailed(f"the identity provider refused the sign-in: {error}")
        token = str(tokens["id_token"])
        try:
            who = self.verifier.verify(token)
        except InvalidToken as exc:
            raise SignInFailed(f"the identity provider's ID token was refused: {exc}") from None
        except IdentityUnavailable as exc:
            raise ProviderUnreachable(str(exc)) from None
        # verified above: its claims can be read without checking the signature again
        nonce = jwt.decode(token, options={"verify_signature": False}).get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(
            nonce.encode(), pending.nonce.encode()
        ):
            raise SignInFailed("the ID token is not this sign-in's (its nonce differs)")
        return who


def pending_cookie(signer: CookieSigner, pending: Pending) -> str:
    return signer.sign(
        "sign-in",
        {"state": pending.state, "nonce": pending.nonce, "v": pending.verifier, "n": pending.next},
        LOGIN_SECONDS,
    )


def read_pending(signer: CookieSigner, cookie: str | None) -> Pending | None:
    body = signer.read("sign-in", cookie)
    if body is None:
        return None
    try:
        return Pending(
            state=str(body["state"]),
            nonce=str(body["nonce"]),
            verifier=str(body["v"]),
            next=local_page(str(body["n"])),
        )
    except KeyError:
        return None
