"""Renewal never widens what was granted (issue 12, point 9): through the broker's API
in-process, with real tokens from the test provider and real PostgreSQL/MariaDB targets.

An approved session renews only within the duration its approvers saw; a break-glass
session only under the break-glass policy (not under an everyday rule its user also has);
and every renewal's audit record names the rule and the approvals it relied on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import Rule, Settings, load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


def _settings(stack: Stack, db: Path) -> Settings:
    settings = load_settings(stack.broker_config)
    # carol is on call (break-glass) and, here, a DBA too: an everyday rule that would let
    # her hold readwrite for 8h must not stretch her break-glass session.
    carol_dba = Rule(
        name="carol-dba",
        users=["carol"],
        targets=["demo", "shop"],
        roles=["readwrite"],
        max_duration=timedelta(hours=8),
    )
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"}),
            "rules": [*settings.rules, carol_dba],
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'renew.db'}")


@pytest.fixture
def api(
    stack: Stack, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    app = create_app(_settings(stack, tmp_path / "renew.db"), store=store, run_reaper=False)
    with TestClient(app) as client:
        yield client


def as_(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def renewals(store: Store, lease_id: str, event: str = "session.renewed") -> list[dict[str, Any]]:
    return [r.detail for r in store.audit_records(lease_id, event=event)]


def approved_session(
    api: TestClient, tokens: dict[str, str], target: str, seconds: int
) -> dict[str, Any]:
    want = {
        "target": target,
        "role": "readwrite",
        "duration_seconds": seconds,
        "reason": "fix order 7",
    }
    request = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=want).json()
    for lead in ("erin", "frank"):
        answer = api.post(f"/v1/requests/{request['id']}/approve", headers=as_(tokens, lead))
        assert answer.status_code == 200, answer.text
    granted = api.post(
        "/v1/sessions", headers=as_(tokens, "alice"), json={**want, "request_id": request["id"]}
    )
    assert granted.status_code == 201, granted.text
    return {**granted.json(), "request_id": request["id"]}


@pytest.mark.parametrize("target", ["demo", "shop"])
def test_an_approved_session_renews_only_within_its_approved_duration(
    api: TestClient, tokens: dict[str, str], store: Store, target: str
) -> None:
    # dev-readwrite allows 1h once two leads approve; they approved 10 minutes
    session = approved_session(api, tokens, target, 600)
    path = f"/v1/sessions/{session['id']}/renew"
    alice = as_(tokens, "alice")

    wider = api.post(path, headers=alice, json={"duration_seconds": 1800})
    assert wider.status_code == 403, wider.text
    error = wider.json()["error"]
    assert error["code"] == "approval_required"
    assert f"request {session['request_id']} was approved for 10m" in error["message"]
    assert "new approvals" in error["message"]
    refused = renewals(store, session["id"], "session.renew_denied")
    assert [(d["rule"], d["target"]) for d in refused] == [("dev-readwrite", target)]
    # nothing moved: neither the lease nor (the next call proves it) the database's clock
    listed = {s["id"]: s for s in api.get("/v1/sessions", headers=alice).json()}
    assert listed[session["id"]]["expires_at"] == session["expires_at"]

    # within what was approved (a renewal to now + 9m50s keeps it under 10m in all)
    within = api.post(path, headers=alice, json={"duration_seconds": 590, "shorten": True})
    assert within.status_code == 200, within.text
    [record] = renewals(store, session["id"])
    assert record["rule"] == "dev-readwrite"
    assert record["request_id"] == session["request_id"]
    assert record["approved_by"] == ["erin", "frank"]
    assert record["approved_duration_seconds"] == 600
    api.delete(f"/v1/sessions/{session['id']}", headers=alice)


def test_a_session_granted_without_approval_cannot_renew_into_a_rule_that_needs_them(
    api: TestClient, tokens: dict[str, str], store: Store, stack: Stack
) -> None:
    # bob's 8h dba rule is the one that granted; a renewal names it in its record
    bob = as_(tokens, "bob")
    session = api.post(
        "/v1/sessions",
        headers=bob,
        json={
            "target": "demo",
            "role": "readwrite",
            "reason": "vacuum",
            "duration_seconds": 600,
        },
    ).json()
    renewed = api.post(
        f"/v1/sessions/{session['id']}/renew", headers=bob, json={"duration_seconds": 1200}
    )
    assert renewed.status_code == 200, renewed.text
    [record] = renewals(store, session["id"])
    assert record["rule"] == "dba-readwrite" and "request_id" not in record
    api.delete(f"/v1/sessions/{session['id']}", headers=bob)

    # alice's readonly session came from dev-readonly (no approvals); readwrite is hers
    # only with approvals, so a lease of that role with no request renews under nothing.
    # (Such a lease arises when a rule loses its approvals then regains them by reload.)
    now = datetime.fromisoformat(session["created_at"])
    lease = store.open_lease(
        now=now,
        subject="alice",
        email="alice@example.com",
        target="demo",
        role="readwrite",
        engine="postgres",
        db_user="dba_alice_renew1",
        rule="dev-readwrite",
        reason="x",
        ticket=None,
        expires_at=now + timedelta(minutes=10),
        source=None,
    )
    store.activate(lease, now)
    refused = api.post(
        f"/v1/sessions/{lease.id}/renew",
        headers=as_(tokens, "alice"),
        json={"duration_seconds": 900},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "approval_required"
    assert "was not approved" in refused.json()["error"]["message"]
    assert "dba_alice_renew1" not in stack.managed_users()


@pytest.mark.parametrize("target", ["demo", "shop"])
def test_a_breakglass_session_renews_only_under_the_breakglass_policy(
    api: TestClient, tokens: dict[str, str], store: Store, stack: Stack, target: str
) -> None:
    carol = as_(tokens, "carol")
    mark = len(stack.webhooks.events)
    opened = api.post(
        "/v1/breakglass",
        headers=carol,
        json={
            "target": target,
            "incident": "INC-77",
            "reason": "orders stuck",
            "duration_seconds": 1200,
        },
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()
    path = f"/v1/sessions/{session['id']}/renew"

    # carol-dba would grant readwrite for 8h; break-glass allows 1h in all, and wins
    longer = api.post(path, headers=carol, json={"duration_seconds": 2 * 3600})
    assert longer.status_code == 403, longer.text
    error = longer.json()["error"]
    assert "break-glass lasts at most 1h in all" in error["message"]
    assert error["hint"].startswith(
        f"it may last 1h in all; the most left: dbaccess renew {session['id']} --duration "
    )
    [denied] = renewals(store, session["id"], "session.renew_denied")
    assert denied["rule"] == "breakglass"

    ok = api.post(path, headers=carol, json={"duration_seconds": 1800})
    assert ok.status_code == 200, ok.text
    [record] = renewals(store, session["id"])
    assert (record["rule"], record["incident"]) == ("breakglass", "INC-77")
    # as loud as the opening
    loud = stack.webhooks.wait_for(
        lambda e: e["event"] == "breakglass.renewed" and e.get("session_id") == session["id"]
    )
    assert "INC-77" in loud["text"] and loud in stack.webhooks.events[mark:]
    api.delete(f"/v1/sessions/{session['id']}", headers=carol)
