"""Token rejection: the broker accepts only properly signed, current tokens for it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from dbaccess.broker.identity import InvalidToken, TokenVerifier
from dbaccess.broker.settings import IdentitySection

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """A tiny real HTTP server publishing a discovery document and a JWKS."""
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            base = f"http://127.0.0.1:{self.server.server_address[1]}/oidc"
            docs = {
                "/oidc/.well-known/openid-configuration": {
                    "issuer": base,
                    "jwks_uri": base + "/jwks",
                },
                "/oidc/jwks": {"keys": [jwk]},
            }
            body = json.dumps(docs.get(self.path, {})).encode()
            self.send_response(200 if self.path in docs else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/oidc"
    server.shutdown()
    server.server_close()


@pytest.fixture
def verifier(issuer: str) -> TokenVerifier:
    return TokenVerifier(IdentitySection(issuer=issuer, client_id="dbaccess-cli"))


def token(
    issuer: str, *, key: Any = KEY, alg: str = "RS256", kid: str = "k1", **overrides: Any
) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": "dbaccess-cli",
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "email": "alice@example.com",
        "groups": ["dev"],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_accepts_a_good_token_and_reads_groups(verifier: TokenVerifier, issuer: str) -> None:
    who = verifier.verify(token(issuer))
    assert who.subject == "alice"
    assert who.email == "alice@example.com"
    assert who.groups == frozenset({"dev"})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda iss: token(iss, key=OTHER_KEY), "Signature verification failed"),
        (lambda iss: token(iss, iss="https://evil.example.com/oidc"), "another issuer"),
        (lambda iss: token(iss, aud="some-other-app"), "another audience"),
        (lambda iss: token(iss, exp=int(time.time()) - 3600), "expired"),
        (lambda iss: token(iss, nbf=int(time.time()) + 3600), "not valid yet"),
        (lambda iss: token(iss, exp=None), "exp"),
        (lambda iss: token(iss, sub=None), "sub"),
        (
            lambda iss: token(iss, key="shared-secret-that-is-long-enough-for-hs256!", alg="HS256"),
            "'HS256' is not allowed",
        ),
        (
            lambda iss: jwt.encode(
                {"iss": iss, "aud": "dbaccess-cli", "sub": "alice", "exp": int(time.time()) + 300},
                None,
                algorithm="none",
            ),
            "'none' is not allowed",
        ),
        (lambda iss: token(iss, kid="unknown"), "no usable signing key"),
        (lambda iss: "not-a-jwt", "not a JWT"),
    ],
    ids=[
        "bad-signature",
        "wrong-iss",
        "wrong-aud",
        "expired",
        "nbf-future",
        "no-exp",
        "no-sub",
        "hs256",
        "alg-none",
        "unknown-kid",
        "garbage",
    ],
)
def test_rejects(verifier: TokenVerifier, issuer: str, make: Any, message: str) -> None:
    with pytest.raises(InvalidToken, match=message):
        verifier.verify(make(issuer))


def test_a_verified_token_is_remembered_until_it_expires(
    verifier: TokenVerifier, issuer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = token(issuer, exp=int(time.time()) + 120)
    assert verifier.cached(good) is None  # never seen: the caller must verify it
    who = verifier.verify(good)
    assert verifier.cached(good) == who
    assert verifier.cached(token(issuer, sub="mallory")) is None  # another token
    later = time.time() + 120 + 60  # past exp and the leeway
    monkeypatch.setattr(time, "time", lambda: later)
    assert verifier.cached(good) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda iss: token(iss, key=OTHER_KEY),
        lambda iss: token(iss, exp=int(time.time()) - 3600),
    ],
)
def test_a_rejected_token_is_never_remembered(
    verifier: TokenVerifier, issuer: str, make: Any
) -> None:
    bad = make(issuer)
    with pytest.raises(InvalidToken):
        verifier.verify(bad)
    assert verifier.cached(bad) is None


def test_a_slow_identity_provider_never_blocks_the_cache(
    verifier: TokenVerifier, issuer: str
) -> None:
    # cached() runs on the broker's event loop and must answer while the key set's lock
    # is taken (e.g. by a request waiting for a fetch).
    good = token(issuer)
    verifier.verify(good)
    answers: list[object] = []
    with verifier.keys._lock:  # as during a slow fetch
        worker = threading.Thread(target=lambda: answers.append(verifier.cached(good)))
        worker.start()
        worker.join(timeout=2)
        assert not worker.is_alive(), "cached() waited for the JWKS lock"
    assert answers and answers[0] is not None


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": ""},
        {"sub": "   "},
        {"sub": "alice\x1b[2J"},
        {"email": ["alice@example.com"]},
        {"email": 7},
        {"email": ""},
        {"email": "a\u202e@x"},
        {"sub": "s" * 256},  # the store keeps 255 characters: refused here, not a 500 there
        {"email": "a" * 250 + "@x.com"},
        {"groups": {"dev": True}},
        {"groups": [["dev"]]},
        {"groups": ["dev", 3]},
        {"groups": 5},
        {"groups": ["dev\n"]},
    ],
    ids=repr,
)
def test_malformed_person_claims_are_refused_not_a_500_later(
    verifier: TokenVerifier, issuer: str, claims: dict[str, Any]
) -> None:
    with pytest.raises(InvalidToken, match="malformed"):
        verifier.verify(token(issuer, **claims))


def test_a_display_name_that_cannot_be_shown_is_dropped(
    verifier: TokenVerifier, issuer: str
) -> None:
    assert verifier.verify(token(issuer, name={"first": "A"})).name is None
    assert verifier.verify(token(issuer, name="Alice \u200fA")).name is None
    assert verifier.verify(token(issuer, name="Alice A", groups="dev")).groups == {"dev"}


def test_an_issuer_with_a_trailing_slash_is_the_same_issuer(
    verifier: TokenVerifier, issuer: str
) -> None:
    # the settings keep issuers without the "/"; Auth0's "iss" ends with one
    assert verifier.verify(token(issuer, iss=issuer.rstrip("/") + "/")).subject == "alice"
    with pytest.raises(InvalidToken, match="another issuer"):
        verifier.verify(token(issuer, iss=issuer.rstrip("/") + "//"))
