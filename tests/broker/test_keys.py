"""The identity key set's rules, on a provider the test controls (the real, stopped provider
is in tests/broker/test_idp_outage.py): kept keys are used without asking, unknown kids do
not cause a fetch each, a failing provider is "unreachable", not "no such key"."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from dbaccess.broker.identity import InvalidToken, TokenVerifier
from dbaccess.broker.keys import (
    LIFESPAN,
    UNKNOWN_KID_INTERVAL,
    IdentityUnavailable,
    IssuerKeys,
    UnknownKey,
)
from dbaccess.broker.settings import IdentitySection

ISSUER = "https://idp.example/oidc"


def jwks(*kids: str) -> dict[str, Any]:
    keys = []
    for kid in kids:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, use="sig", alg="RS256")
        keys.append(jwk)
    return {"keys": keys}


class Provider:
    """Answers discovery and JWKS, counting JWKS fetches; ``down`` makes it fail."""

    def __init__(self, keyset: dict[str, Any]) -> None:
        self.keyset = keyset
        self.fetches = 0
        self.down = False

    def __call__(self, url: str) -> dict[str, Any]:
        if self.down:
            raise ConnectionError(f"no answer from {url} in time")
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": ISSUER, "jwks_uri": ISSUER + "/jwks"}
        self.fetches += 1
        return self.keyset


class Keeper:
    def __init__(self) -> None:
        self.kept: dict[str, tuple[str, dict[str, Any], datetime]] = {}

    def load_identity_keys(self, issuer: str) -> tuple[str, dict[str, Any], datetime] | None:
        return self.kept.get(issuer)

    def save_identity_keys(
        self, issuer: str, jwks_uri: str, jwks: dict[str, Any], now: datetime
    ) -> None:
        self.kept[issuer] = (jwks_uri, jwks, now)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unknown_kids_cause_one_fetch_per_interval() -> None:
    provider, clock = Provider(jwks("k1")), Clock()
    keys = IssuerKeys(ISSUER, http_get=provider, clock=clock)
    assert keys.signing_key("k1").key_id == "k1"
    assert provider.fetches == 1
    for n in range(50):
        with pytest.raises(UnknownKey):
            keys.signing_key(f"forged-{n}")
    assert provider.fetches == 1  # the provider answered just now: no such key
    clock.now += UNKNOWN_KID_INTERVAL + 1
    provider.keyset = jwks("k2")  # rotated
    assert keys.signing_key("k2").key_id == "k2"
    assert provider.fetches == 2
    with pytest.raises(UnknownKey):  # a key the provider no longer publishes is gone
        keys.signing_key("k1")


def test_a_known_key_never_waits_for_a_refresh() -> None:
    provider, clock = Provider(jwks("k1")), Clock()
    keys = IssuerKeys(ISSUER, http_get=provider, clock=clock)
    keys.signing_key("k1")
    release = threading.Event()

    def hung(url: str) -> dict[str, Any]:
        release.wait(30)
        raise ConnectionError("no answer")

    keys._http_get = hung
    clock.now += LIFESPAN + 1  # old: a refresh starts, behind the answer
    assert keys.signing_key("k1").key_id == "k1"
    assert keys._running is not None
    release.set()


def test_a_failing_provider_is_unreachable_not_an_unknown_key() -> None:
    provider = Provider(jwks("k1"))
    provider.down = True
    keys = IssuerKeys(ISSUER, http_get=provider, clock=Clock())
    with pytest.raises(IdentityUnavailable, match="unreachable"):
        keys.signing_key("k1")
    with pytest.raises(IdentityUnavailable, match="unreachable"):  # no second fetch
        keys.signing_key("k1")
    assert keys.status()["status"] == "unreachable"


def test_kept_keys_are_used_while_the_provider_is_down_and_replaced_when_it_answers() -> None:
    keeper, first = Keeper(), Provider(jwks("k1"))
    IssuerKeys(ISSUER, http_get=first, keeper=keeper).refresh().wait(10)
    assert keeper.kept[ISSUER][0] == ISSUER + "/jwks"

    down = Provider(jwks("k2"))
    down.down = True
    restarted = IssuerKeys(ISSUER, http_get=down, keeper=keeper)
    assert restarted.signing_key("k1").key_id == "k1"  # from the store, no provider
    down.down = False
    restarted.refresh().wait(10)
    assert restarted.signing_key("k2").key_id == "k2"
    assert [k["kid"] for k in keeper.kept[ISSUER][1]["keys"]] == ["k2"]


def test_an_old_kept_set_is_still_used_and_refreshed_behind() -> None:
    keeper = Keeper()
    keeper.kept[ISSUER] = (ISSUER + "/jwks", jwks("k1"), datetime.now(UTC) - timedelta(days=3))
    provider = Provider(jwks("k1"))
    keys = IssuerKeys(ISSUER, http_get=provider, keeper=keeper)
    assert keys.signing_key("k1").key_id == "k1"
    assert keys._running is not None or provider.fetches == 1


@pytest.mark.parametrize("kid", [7, ["k1"], {"k": 1}])
def test_a_malformed_kid_is_a_401_not_a_500(kid: Any) -> None:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    token = ".".join(
        [
            part({"alg": "RS256", "kid": kid}),
            part({"iss": ISSUER, "aud": "dbaccess-cli", "sub": "a"}),
            "c2ln",
        ]
    )
    provider = Provider(jwks("k1"))
    verifier = TokenVerifier(
        IdentitySection(issuer=ISSUER, client_id="dbaccess-cli"), http_get=provider
    )
    with pytest.raises(InvalidToken):
        verifier.verify(token)
    assert provider.fetches == 0
