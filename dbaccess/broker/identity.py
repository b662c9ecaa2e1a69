"""Who is calling: verify a bearer JWT against the issuer's published keys.

Checks: signature with a key from the issuer's JWKS (``broker/keys.py``: fetched in the
background, kept in the store, never a request's wait on the provider), an allow-list
of asymmetric algorithms (so ``none`` and HMAC tricks fail), ``iss``, ``aud``, ``exp``
and ``nbf`` (with a small leeway), and a ``sub``.

A token that passed is remembered (by its hash) until it expires: the CLI sends the same
token for every call of a session, and the broker then answers without a signature check
or a thread hop (``cached``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from dbaccess.broker.keys import IdentityUnavailable, IssuerKeys, KeyKeeper, UnknownKey
from dbaccess.broker.settings import IdentitySection
from dbaccess.text import first_unsafe

VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The bearer token is not acceptable; the message is safe to return to the caller."""


@dataclass(frozen=True)
class Principal:
    subject: str
    email: str | None
    name: str | None
    groups: frozenset[str] = field(default_factory=frozenset)
    # The provider vouches for ``email`` (identity.email_verified_claim): only then may a
    # rule that names a user by email match this principal.
    email_verified: bool = False

    def named_by(self, users: list[str]) -> bool:
        """One of ``users`` (a rule's list) names this principal: its subject exactly, or
        its email in any letter case — a verified email only, since anyone may put any
        address in an unverified one."""
        if self.subject in users:
            return True
        if not (self.email and self.email_verified):
            return False
        mine = self.email.casefold()
        return any("@" in user and user.casefold() == mine for user in users)

    def same_person(self, subject: str, email: str | None) -> bool:
        """The person who asked (``subject``, ``email``) is this one: the same subject, or the
        same email in any letter case — a second account of one person must not approve or
        review what the first one did."""
        return subject == self.subject or bool(
            email and self.email and email.casefold() == self.email.casefold()
        )

    @property
    def verified_email(self) -> str | None:
        """``email`` when the provider vouches for it, else None: the address a lease, an
        audit event, a database user's name or a chat message may give as this person's
        (anyone may type anyone's address into an unverified one)."""
        return self.email if self.email_verified else None

    @property
    def handle(self) -> str:
        """A short, human name for usernames and audit lines: a verified email's local part,
        else the subject."""
        email = self.verified_email
        if email and "@" in email:
            return email.split("@", 1)[0]
        return self.subject


__all__ = ["IdentityUnavailable", "InvalidToken", "Principal", "TokenVerifier"]


class TokenVerifier:
    """Verifies tokens for one issuer. Thread-safe. ``keeper`` (the store) keeps the last
    good key set across restarts."""

    def __init__(
        self,
        identity: IdentitySection,
        *,
        http_get: Callable[[str], dict[str, Any]] | None = None,
        keeper: KeyKeeper | None = None,
    ) -> None:
        self._identity = identity
        self.keys = IssuerKeys(identity.issuer, http_get=http_get, keeper=keeper)
        # sha256(token) -> (principal, exp) of tokens that passed every check. ``cached``
        # runs on the event loop, which must never wait for the network: this lock is
        # never held across I/O.
        self._verified: dict[bytes, tuple[Principal, float]] = {}
        self._verified_lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not expired since — no signature
        check, no key lookup, no I/O: safe to call on the event loop. None otherwise."""
        key = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            hit = self._verified.get(key)
        if hit is None or time.time() >= hit[1] + self._identity.leeway.total_seconds():
            return None
        return hit[0]

    def verify(self, token: str) -> Principal:
        """Check the token fully (may fetch the issuer's keys) and remember the result until
        the token expires, for ``cached``."""
        principal, expires = self._verify(token)
        key = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()  # simple and bounded; a miss only costs a verify
            self._verified[key] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._identity.algorithms:
            raise InvalidToken(f"token algorithm {algorithm!r} is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("token has a malformed 'kid' header")
        try:
            key = self.keys.signing_key(kid)  # IdentityUnavailable: the caller's 503
        except UnknownKey as exc:
            raise InvalidToken(f"no usable signing key: {exc}") from None
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self._identity.algorithms),
                audience=self._identity.accepted_audiences,
                # the settings keep the issuer without a trailing "/"; a provider whose
                # "iss" has one (Auth0) is the same issuer
                issuer=[self._identity.issuer, self._identity.issuer + "/"],
                leeway=self._identity.leeway,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_nbf": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token was issued for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token was issued by another issuer") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token is not valid yet") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token rejected: {exc}") from None
        if not self._identity.accept_access_tokens and is_access_token(header, claims):
            raise InvalidToken(
                "this is an access token; the broker takes the ID token of a login "
                "(identity.accept_access_tokens allows access tokens)"
            )
        verified_claim = self._identity.email_verified_claim
        principal = Principal(
            subject=_claim_text(claims, "sub"),
            email=_claim_text(claims, "email", optional=True),
            # a display name only (no decision uses it): one that cannot be shown is dropped
            name=name
            if isinstance(name := claims.get("name"), str) and not first_unsafe(name)
            else None,
            groups=_groups(claims, self._identity.groups_claim),
            email_verified=bool(verified_claim) and _true(claims.get(verified_claim or "")),
        )
        return principal, float(claims["exp"])


# Claims only access tokens carry: OAuth scopes (scp: Entra, Okta; scope: RFC 9068, Auth0,
# Keycloak), the client (client_id: RFC 9068; appid: Entra v1; cid: Okta), and how the
# client authenticated or whether it acted alone (Entra's azpacr, v2, and appidacr, v1:
# an app-only token of the client credentials flow has no scp; idtyp: "app" or "user").
_ACCESS_TOKEN_CLAIMS = ("scp", "scope", "client_id", "appid", "cid", "azpacr", "appidacr", "idtyp")


def is_access_token(header: dict[str, Any], claims: dict[str, Any]) -> bool:
    """The token is an OAuth access token, not an OpenID Connect ID token: RFC 9068's
    ``typ: at+jwt`` header, a claim only access tokens carry, or a provider's own marker
    (Keycloak's ``typ: Bearer`` claim, Cognito's ``token_use: access``). ID tokens have
    none of these (OpenID Connect Core, section 2)."""
    typ = str(header.get("typ", "")).lower()
    if typ in ("at+jwt", "application/at+jwt"):
        return True
    if any(name in claims for name in _ACCESS_TOKEN_CLAIMS):
        return True
    return claims.get("typ") == "Bearer" or claims.get("token_use") == "access"


def _true(value: Any) -> bool:
    """A verified-flag claim: JSON true, or the string "true" (some providers send one)."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _claim_text(claims: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    """A claim that names a person: a non-empty string people can be shown (it reaches
    approvers, the audit trail and SQL comparisons), or a 401 — never a 500 later."""
    value = claims.get(name)
    if value is None and optional:
        return None
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_CLAIM
        or first_unsafe(value)
    ):
        raise InvalidToken(f"token has a malformed '{name}' claim")
    return value


# The store keeps a subject or an email in 255 characters (RFC 5321 allows 254 for an
# address): a longer claim is refused at the token, not by the store mid-request (a 500)
MAX_CLAIM = 255


def _groups(claims: dict[str, Any], claim: str) -> frozenset[str]:
    groups = claims.get(claim, [])
    if isinstance(groups, str):  # some providers send one group as a plain string
        groups = [groups]
    if not isinstance(groups, list) or not all(
        isinstance(g, str) and g and not first_unsafe(g) for g in groups
    ):
        raise InvalidToken(f"token has a malformed '{claim}' claim (a list of names)")
    return frozenset(groups)
