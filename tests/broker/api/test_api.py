"""The broker's HTTP API, in-process (Starlette's TestClient), with real tokens from the
test provider and a real PostgreSQL target."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {
        name: device_tokens(stack.idp, name)["id_token"] for name in ("alice", "bob", "mallory")
    }


@pytest.fixture
def api(stack: Stack, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'api.db'}"}
            )
        }
    )
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    app = create_app(settings, run_reaper=False)
    with TestClient(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_public_config_needs_no_token(api: TestClient, stack: Stack) -> None:
    body = api.get("/v1/config").json()
    assert body["issuer"] == stack.idp.issuer
    assert body["client_id"] == "dbaccess-cli"
    assert "openid" in body["scopes"]


def test_calls_without_a_valid_token_are_refused(api: TestClient) -> None:
    assert api.get("/v1/sessions").json()["error"]["code"] == "not_logged_in"
    answer = api.get("/v1/sessions", headers=bearer("nonsense"))
    assert answer.status_code == 401
    assert answer.json()["error"] == {
        "code": "invalid_token",
        "message": "bearer token is not a JWT",
        "hint": "dbaccess login",
    }


def test_me_reports_identity_and_groups(api: TestClient, tokens: dict[str, str]) -> None:
    me = api.get("/v1/me", headers=bearer(tokens["bob"])).json()
    assert me["subject"] == "bob" and me["groups"] == ["dba", "dev"]


def test_session_lifecycle_and_ownership(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    created = api.post(
        "/v1/sessions",
        headers=bearer(tokens["alice"]),
        json={"target": "demo", "role": "readonly", "duration_seconds": 600},
    )
    assert created.status_code == 201, created.text
    session = created.json()
    assert created.headers["cache-control"] == "no-store"
    assert session["db_user"].startswith("dba_alice_")
    # the password works against the real database, for exactly that user
    with stack.postgres.connect(
        "demo", user=session["db_user"], password=session["password"]
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (session["db_user"],)

    listed = api.get("/v1/sessions", headers=bearer(tokens["alice"])).json()
    assert [s["id"] for s in listed] == [session["id"]]
    assert "password" not in listed[0]
    assert api.get("/v1/sessions", headers=bearer(tokens["bob"])).json() == []
    # someone else's session cannot be revoked, or even seen to exist
    stolen = api.delete(f"/v1/sessions/{session['id']}", headers=bearer(tokens["bob"]))
    assert stolen.status_code == 404
    revoked = api.delete(f"/v1/sessions/{session['id']}", headers=bearer(tokens["alice"]))
    assert revoked.json()["state"] == "revoked"
    with stack.postgres.connect() as admin:
        assert (
            admin.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (session["db_user"],)
            ).fetchone()
            is None
        )


def test_denials_and_bad_requests_change_nothing(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    def managed() -> int:
        with stack.postgres.connect() as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dba\\_%'"
            ).fetchone()
        return int(row[0]) if row else 0

    before = managed()
    cases = [
        ("mallory", {"target": "demo", "role": "readonly"}, 403, "denied"),
        ("alice", {"target": "demo", "role": "readonly", "duration_seconds": 7200}, 403, "denied"),
        ("bob", {"target": "demo", "role": "readwrite"}, 403, "reason_required"),
        ("alice", {"target": "nope", "role": "readonly"}, 404, "unknown_target"),
        ("alice", {"target": "demo", "role": "superuser"}, 404, "unknown_role"),
        (
            "alice",
            {"target": "demo", "role": "readonly", "duration_seconds": -5},
            422,
            "invalid_request",
        ),
        ("alice", {"target": "demo", "role": "readonly", "extra": 1}, 422, "invalid_request"),
    ]
    for who, body, status, code in cases:
        answer = api.post("/v1/sessions", headers=bearer(tokens[who]), json=body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), body
    assert managed() == before
    denials = [
        r
        for r in Store(str(api.app.state.service.ctx.store.engine.url)).audit_records()  # type: ignore[attr-defined]
        if r.event == "session.denied"
    ]
    assert {r.subject for r in denials} == {"mallory", "alice", "bob"}
    assert any("at most 1h" in r.detail["explanation"] for r in denials)


def test_renew_moves_the_expiry_within_the_rules_limit(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    from datetime import datetime

    alice = bearer(tokens["alice"])
    session = api.post(
        "/v1/sessions",
        headers=alice,
        json={"target": "demo", "role": "readonly", "duration_seconds": 600},
    ).json()

    def valid_until() -> datetime:
        with stack.postgres.connect() as admin:
            row = admin.execute(
                "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", (session["db_user"],)
            ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    before = valid_until()
    renewed = api.post(
        f"/v1/sessions/{session['id']}/renew", headers=alice, json={"duration_seconds": 1800}
    )
    assert renewed.status_code == 200, renewed.text
    new_expiry = datetime.fromisoformat(renewed.json()["expires_at"])
    assert new_expiry > datetime.fromisoformat(session["expires_at"])
    assert valid_until() == new_expiry > before  # the database's clock moved too

    too_long = api.post(
        f"/v1/sessions/{session['id']}/renew", headers=alice, json={"duration_seconds": 7200}
    )
    assert too_long.status_code == 403
    assert "allows at most 1h" in too_long.json()["error"]["message"]
    assert valid_until() == new_expiry  # unchanged
    assert (
        api.post(
            f"/v1/sessions/{session['id']}/renew", headers=bearer(tokens["bob"]), json={}
        ).status_code
        == 404
    )
    api.delete(f"/v1/sessions/{session['id']}", headers=alice)
    gone = api.post(f"/v1/sessions/{session['id']}/renew", headers=alice, json={})
    assert gone.status_code == 409
