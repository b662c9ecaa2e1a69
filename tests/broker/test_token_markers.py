"""Telling access tokens from ID tokens, and reading the verified-email flag, for the
providers the broker meets (issue 12, point 10). The real provider's tokens go through
the broker in tests/broker/api/test_token_kinds.py; these are the other providers' shapes."""

from __future__ import annotations

from typing import Any

import pytest

from dbaccess.broker.identity import _true, is_access_token
from dbaccess.broker.settings import IdentitySection

ID_TOKEN = {
    "iss": "i",
    "aud": "client",
    "sub": "s",
    "exp": 1,
    "iat": 0,
    "nonce": "n",
    "email": "a@example.com",
    "email_verified": True,
    "groups": ["dev"],
}


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({"typ": "at+jwt"}, {}),  # RFC 9068 (oidc-provider, Auth0, Duende)
        ({"typ": "application/at+jwt"}, {}),
        ({"typ": "JWT"}, {"scp": "user_impersonation", "ver": "2.0", "azp": "c"}),  # Entra v2
        ({"typ": "JWT"}, {"appid": "c", "ver": "1.0"}),  # Entra v1
        # Entra app-only (client credentials): roles, no scp
        ({"typ": "JWT"}, {"azp": "c", "azpacr": "1", "roles": ["Read.All"], "ver": "2.0"}),
        ({"typ": "JWT"}, {"appidacr": "1", "roles": ["Read.All"], "ver": "1.0"}),
        ({"typ": "JWT"}, {"azp": "c", "idtyp": "app", "ver": "2.0"}),
        ({}, {"scope": "openid email"}),  # Keycloak, Auth0
        ({}, {"client_id": "c"}),  # RFC 9068's required claim
        ({}, {"cid": "c", "scp": ["openid"]}),  # Okta
        ({}, {"typ": "Bearer", "azp": "c"}),  # Keycloak's own marker
        ({}, {"token_use": "access"}),  # Amazon Cognito
    ],
)
def test_access_tokens_are_recognised(header: dict[str, Any], claims: dict[str, Any]) -> None:
    assert is_access_token({"alg": "RS256", **header}, {**ID_TOKEN, **claims})


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({"typ": "JWT"}, {}),  # Entra, Google
        ({}, {}),  # oidc-provider sends no typ
        ({}, {"typ": "ID", "azp": "c"}),  # Keycloak
        ({}, {"token_use": "id"}),  # Cognito
        ({}, {"at_hash": "x", "roles": ["admin"]}),  # Entra app roles are in ID tokens too
    ],
)
def test_id_tokens_are_not(header: dict[str, Any], claims: dict[str, Any]) -> None:
    assert not is_access_token({"alg": "RS256", **header}, {**ID_TOKEN, **claims})


def test_the_verified_flag_is_true_or_the_string_true_only() -> None:
    assert _true(True) and _true("true") and _true(" TRUE ")
    for value in (False, "false", 1, "1", "yes", None, [True], {"value": True}):
        assert not _true(value)


def test_the_verified_claim_by_kind_of_provider() -> None:
    oidc = IdentitySection(issuer="https://login.example.com/x", client_id="c")
    assert oidc.email_verified_claim == "email_verified" and not oidc.accept_access_tokens
    entra = IdentitySection(kind="entra", tenant="contoso", client_id="c")
    assert entra.email_verified_claim == "xms_edov"
    none = IdentitySection(
        issuer="https://login.example.com/x", client_id="c", email_verified_claim=""
    )
    assert none.email_verified_claim == ""
