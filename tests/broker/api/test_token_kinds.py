"""Identity (issue 12, point 10): the broker takes an ID token, not an access token of the
same client, unless configured; and a rule that names a user by email matches only an
email the provider verified. Through the broker in-process, with tokens from a real
``oidc-provider`` (its RFC 9068 JWT access tokens for an API whose audience is the CLI's
client id, and a person whose email claim is unverified) and a real PostgreSQL target."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import Rule, Settings, load_settings
from dbaccess.sandbox.idp import DEFAULT_USERS, TEST_API, IdpUser, OidcProvider, device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration

# eve may type any address into her profile: the provider sends it unverified
EVE = IdpUser("eve", "Alice@example.com", "Eve", [], email_verified=False)
ALICE_BY_EMAIL = Rule(
    name="alice-by-email",
    users=["alice@example.com"],
    targets=["demo"],
    roles=["readwrite"],
    max_duration=timedelta(hours=1),
)
EVE_BY_SUBJECT = Rule(
    name="eve-by-subject",
    users=["eve"],
    targets=["demo"],
    roles=["readonly"],
    max_duration=timedelta(hours=1),
)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path_factory.mktemp("idp-kinds"), [*DEFAULT_USERS, EVE]) as running:
        yield running


@pytest.fixture(scope="module")
def minted(idp: OidcProvider) -> dict[str, str]:
    alice = device_tokens(idp, "alice", scope="openid email profile groups api", resource=TEST_API)
    return {
        "alice": alice["id_token"],
        "alice_access": alice["access_token"],
        "eve": device_tokens(idp, "eve")["id_token"],
    }


def broker(stack: Stack, idp: OidcProvider, tmp_path: Path, **identity: Any) -> TestClient:
    settings: Settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'kinds.db'}"}
            ),
            "identity": settings.identity.model_copy(update={"issuer": idp.issuer, **identity}),
            "rules": [ALICE_BY_EMAIL, EVE_BY_SUBJECT],
        }
    )
    return TestClient(create_app(settings, run_reaper=False))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_an_access_token_is_not_an_id_token_unless_configured(
    stack: Stack,
    idp: OidcProvider,
    minted: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jwt

    access = minted["alice_access"]
    header = jwt.get_unverified_header(access)
    claims = jwt.decode(access, options={"verify_signature": False})
    # what makes it dangerous: the same issuer, key and audience as the ID token
    assert header["typ"] == "at+jwt" and claims["aud"] == idp.client_id
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    with broker(stack, idp, tmp_path) as api:
        refused = api.get("/v1/me", headers=bearer(access))
        assert refused.status_code == 401
        assert refused.json()["error"] == {
            "code": "invalid_token",
            "message": "this is an access token; the broker takes the ID token of a login "
            "(identity.accept_access_tokens allows access tokens)",
            "hint": "dbaccess login",
        }
        made = api.post(
            "/v1/sessions", headers=bearer(access), json={"target": "demo", "role": "readwrite"}
        )
        assert made.status_code == 401  # nothing else takes it either
        assert api.get("/v1/me", headers=bearer(minted["alice"])).status_code == 200
    with broker(stack, idp, tmp_path, accept_access_tokens=True) as api:
        me = api.get("/v1/me", headers=bearer(access))
        assert me.status_code == 200, me.text
        assert me.json()["subject"] == "alice"


def test_a_rule_naming_an_email_needs_it_verified(
    stack: Stack,
    idp: OidcProvider,
    minted: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    want = {"target": "demo", "role": "readwrite", "duration_seconds": 600}
    with broker(stack, idp, tmp_path) as api:
        eve, alice = bearer(minted["eve"]), bearer(minted["alice"])
        # the broker keeps and shows no unverified address as hers, not even to her
        assert api.get("/v1/me", headers=eve).json()["email"] is None
        stolen = api.post("/v1/sessions", headers=eve, json=want)
        assert stolen.status_code == 403, stolen.text
        # what eve may request: her rule by subject, not alice's by email
        assert [(t["target"], t["role"]) for t in api.get("/v1/targets", headers=eve).json()] == [
            ("demo", "readonly")
        ]
        granted = api.post("/v1/sessions", headers=alice, json=want)
        assert granted.status_code == 201, granted.text
        api.delete(f"/v1/sessions/{granted.json()['id']}", headers=alice)
    # a provider whose emails the broker is told not to trust: rules match subjects only
    with broker(stack, idp, tmp_path, email_verified_claim="") as api:
        refused = api.post("/v1/sessions", headers=bearer(minted["alice"]), json=want)
        assert refused.status_code == 403


def test_an_unverified_email_names_nobody_in_what_the_broker_records(
    stack: Stack,
    idp: OidcProvider,
    minted: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # eve's profile says Alice@example.com: her session must not read as alice's anywhere a
    # person looks for who did it (the database user, the lease, the audit, the listing)
    import sqlalchemy as sa

    from dbaccess.broker.store import Store
    from dbaccess.broker.store.schema import leases

    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    want = {"target": "demo", "role": "readonly", "duration_seconds": 600}
    with broker(stack, idp, tmp_path) as api:
        eve = bearer(minted["eve"])
        made = api.post("/v1/sessions", headers=eve, json=want)
        assert made.status_code == 201, made.text
        session = made.json()
        assert session["db_user"].startswith("dba_eve")  # her subject names her
        assert "alice" not in session["db_user"].lower()
        listed = api.get("/v1/sessions", headers=eve).json()
        assert [s["db_user"] for s in listed] == [session["db_user"]]
        assert api.delete(f"/v1/sessions/{session['id']}", headers=eve).status_code in (200, 204)
    store = Store(f"sqlite:///{tmp_path / 'kinds.db'}")
    with store.engine.connect() as conn:
        (lease,) = conn.execute(sa.select(leases.c.subject, leases.c.email)).all()
    assert lease == ("eve", None)
    records = store.audit_records(subject="eve")
    assert {r.event for r in records} >= {"session.granted", "session.revoked"}
    for record in records:
        assert "alice" not in repr(record.detail).lower(), record
