"""Approvals and break-glass through the broker's API (in-process, real tokens from the
test provider, real PostgreSQL and MariaDB targets, a real webhook receiver)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.broker.store import Store
from dbaccess.broker.store.audit_chain import raw_records, verify
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


def _settings(stack: Stack, tmp_path: Path, **broker: Any) -> Settings:
    settings = load_settings(stack.broker_config)
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'api.db'}", **broker}
            )
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'api.db'}")


@pytest.fixture
def api(
    stack: Stack, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    app = create_app(_settings(stack, tmp_path), store=store, run_reaper=False)
    with TestClient(app, headers={"User-Agent": "dbaccess-test/1.0"}) as client:
        yield client


def as_(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def events_since(stack: Stack, mark: int, event: str) -> list[dict[str, Any]]:
    return [e for e in stack.webhooks.events[mark:] if e["event"] == event]


def audit_events(store: Store) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(r.event, r.subject, r.detail) for r in store.audit_records(limit=10000)]


def test_two_person_approval_then_one_session(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    mark = len(stack.webhooks.events)
    want = {"target": "demo", "role": "readwrite", "duration_seconds": 900}
    no_reason = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=want)
    assert no_reason.status_code == 403
    assert no_reason.json()["error"]["code"] == "reason_required"

    pending = api.post(
        "/v1/sessions", headers=as_(tokens, "alice"), json={**want, "reason": "fix order 7"}
    )
    assert pending.status_code == 202, pending.text
    request = pending.json()
    assert "password" not in request
    assert (request["state"], request["approvals_required"]) == ("pending", 2)
    created = stack.webhooks.wait_for(
        lambda e: e["event"] == "request.created" and e["request_id"] == request["id"]
    )
    assert "alice" in created["text"] and "fix order 7" in created["text"]

    # What the approvers see, and what they may do.
    listed = api.get("/v1/requests", headers=as_(tokens, "erin")).json()
    assert [r["id"] for r in listed if r["can_approve"]] == [request["id"]]
    assert api.get("/v1/requests", headers=as_(tokens, "bob")).json() == []
    mine = api.get("/v1/requests?mine=true", headers=as_(tokens, "alice")).json()
    assert [r["id"] for r in mine] == [request["id"]]
    rid = request["id"]
    not_lead = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "bob"))
    assert not_lead.status_code == 404  # not an approver: the request is not even shown

    first = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "erin")).json()
    assert (first["state"], [a["by"] for a in first["approvals"]]) == ("pending", ["erin"])
    twice = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "erin"))
    assert twice.status_code == 409 and "already approved" in twice.json()["error"]["message"]
    early = api.post("/v1/sessions", headers=as_(tokens, "alice"), json={**want, "request_id": rid})
    assert early.status_code == 409 and early.json()["error"]["code"] == "request_pending"

    second = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "frank")).json()
    assert second["state"] == "approved"
    stack.webhooks.wait_for(
        lambda e: (
            e["event"] == "request.approved" and e["request_id"] == rid and e["state"] == "approved"
        )
    )

    # Someone else cannot redeem it; the requester can, once.
    stolen = api.post("/v1/sessions", headers=as_(tokens, "bob"), json={**want, "request_id": rid})
    assert stolen.status_code == 404
    granted = api.post(
        "/v1/sessions", headers=as_(tokens, "alice"), json={**want, "request_id": rid}
    )
    assert granted.status_code == 201, granted.text
    session = granted.json()
    assert session["db_user"] in stack.managed_users()
    again = api.post("/v1/sessions", headers=as_(tokens, "alice"), json={**want, "request_id": rid})
    assert again.status_code == 409 and again.json()["error"]["code"] == "request_used"

    trail = audit_events(store)
    approvals = [(s, d["approvals"]) for e, s, d in trail if e == "request.approved"]
    assert approvals == [("erin", 1), ("frank", 2)]
    granted_record = next(d for e, _, d in trail if e == "session.granted")
    assert granted_record["request_id"] == rid
    requested = next(d for e, _, d in trail if e == "session.requested")
    assert requested["approved_by"] == ["erin", "frank"]
    assert requested["reason"] == "fix order 7"
    assert requested["user_agent"] == "dbaccess-test/1.0" and requested["source"]
    assert verify(raw_records(store)).ok
    api.delete(f"/v1/sessions/{session['id']}", headers=as_(tokens, "alice"))
    assert session["db_user"] not in stack.managed_users()
    assert len(events_since(stack, mark, "request.approved")) == 2


def test_self_approval_is_refused_and_recorded(
    api: TestClient, tokens: dict[str, str], store: Store
) -> None:
    pending = api.post(
        "/v1/sessions",
        headers=as_(tokens, "erin"),  # erin is a developer and a lead
        json={"target": "shop", "role": "readwrite", "reason": "backfill"},
    ).json()
    refused = api.post(f"/v1/requests/{pending['id']}/approve", headers=as_(tokens, "erin"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "self_approval"
    listed = api.get("/v1/requests", headers=as_(tokens, "erin")).json()
    assert pending["id"] not in [r["id"] for r in listed]  # not offered to herself
    assert (
        api.get(f"/v1/requests/{pending['id']}", headers=as_(tokens, "erin")).json()["approvals"]
        == []
    )
    refusal = [d for e, s, d in audit_events(store) if e == "request.decision_refused"]
    assert refusal and refusal[0]["refusal"] == "own request"


def test_denied_request_cannot_be_used(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    want = {"target": "demo", "role": "readwrite", "reason": "drop a table"}
    rid = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=want).json()["id"]
    no_reason = api.post(f"/v1/requests/{rid}/deny", headers=as_(tokens, "frank"), json={})
    assert no_reason.status_code == 422
    denied = api.post(
        f"/v1/requests/{rid}/deny", headers=as_(tokens, "frank"), json={"reason": "not today"}
    ).json()
    assert (denied["state"], denied["denied_by"], denied["deny_reason"]) == (
        "denied",
        "frank",
        "not today",
    )
    used = api.post("/v1/sessions", headers=as_(tokens, "alice"), json={**want, "request_id": rid})
    assert used.status_code == 409 and used.json()["error"]["code"] == "request_denied"
    late = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "erin"))
    assert late.status_code == 409
    stack.webhooks.wait_for(
        lambda e: (
            e["event"] == "request.denied" and e["request_id"] == rid and "not today" in e["text"]
        )
    )


def test_requests_expire(
    stack: Stack, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    from datetime import timedelta

    store = Store(f"sqlite:///{tmp_path / 'api.db'}")
    settings = _settings(stack, tmp_path, request_ttl=timedelta(seconds=1))
    with TestClient(create_app(settings, store=store, run_reaper=False)) as api:
        want = {"target": "demo", "role": "readwrite", "reason": "quick fix"}
        rid = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=want).json()["id"]
        time.sleep(1.5)
        late = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "erin"))
        assert late.status_code == 409 and "expired" in late.json()["error"]["message"]
        shown = api.get(f"/v1/requests/{rid}", headers=as_(tokens, "alice")).json()
        assert shown["state"] == "expired"
        used = api.post(
            "/v1/sessions", headers=as_(tokens, "alice"), json={**want, "request_id": rid}
        )
        assert used.status_code == 409 and used.json()["error"]["code"] == "request_expired"
    assert [d["request_id"] for e, _, d in audit_events(store) if e == "request.expired"] == [rid]
    stack.webhooks.wait_for(lambda e: e["event"] == "request.expired" and e["request_id"] == rid)


def test_breakglass_rules(api: TestClient, tokens: dict[str, str], store: Store) -> None:
    policy = api.get("/v1/breakglass", headers=as_(tokens, "carol")).json()
    assert policy["allowed"] and policy["targets"] == {"demo": "readwrite", "shop": "readwrite"}
    assert policy["engines"] == {"demo": "postgres", "shop": "mariadb"}
    assert api.get("/v1/breakglass", headers=as_(tokens, "alice")).json() == {
        "allowed": False,
        "targets": {},
        "engines": {},
        "incident_pattern": None,
        "max_duration_seconds": None,
        "drill_every_seconds": None,
        "last_drill": None,
        "drill_overdue": False,
    }
    body = {"incident": "INC-9", "reason": "orders stuck"}
    ambiguous = api.post("/v1/breakglass", headers=as_(tokens, "carol"), json=body)
    assert ambiguous.status_code == 409
    assert ambiguous.json()["error"]["message"] == "break-glass covers several targets: demo, shop"
    cases = [
        ("alice", {**body, "target": "demo"}, "break-glass is for members of oncall"),
        (
            "carol",
            {**body, "target": "demo", "incident": "whatever"},
            "incident id 'whatever' does not match INC-[0-9]+",
        ),
        ("carol", {**body, "target": "demo", "reason": "  "}, "break-glass needs a reason"),
        (
            "carol",
            {**body, "target": "demo", "duration_seconds": 7200},
            "break-glass lasts at most 1h",
        ),
    ]
    for who, request, message in cases:
        answer = api.post("/v1/breakglass", headers=as_(tokens, who), json=request)
        assert answer.status_code == 403, request
        assert answer.json()["error"]["message"].startswith(message)
    denials = [d for e, _, d in audit_events(store) if e == "breakglass.denied"]
    assert len(denials) == len(cases)


@pytest.mark.parametrize("target", ["demo", "shop"])
def test_breakglass_is_loud_short_elevated_and_reviewed(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store, target: str
) -> None:
    answer = api.post(
        "/v1/breakglass",
        headers=as_(tokens, "carol"),
        json={"target": target, "incident": "INC-123", "reason": "orders stuck", "drill": False},
    )
    assert answer.status_code == 201, answer.text
    session = answer.json()
    assert (session["kind"], session["role"], session["incident"]) == (
        "breakglass",
        "readwrite",
        "INC-123",
    )
    lasts = (_parse(session["expires_at"]) - _parse(session["created_at"])).total_seconds()
    assert 3590 <= lasts <= 3601  # the policy's short maximum, 1h
    hook = stack.webhooks.wait_for(
        lambda e: e["event"] == "breakglass.opened" and e.get("session_id") == session["id"]
    )
    for fact in (
        "carol",
        target,
        "INC-123",
        "orders stuck",
        session["expires_at"][:16].replace("T", " "),
    ):
        assert fact in hook["text"], fact
    assert (hook["user"], hook["incident"], hook["reason"], hook["drill"]) == (
        "carol",
        "INC-123",
        "orders stuck",
        False,
    )

    reviews = api.get("/v1/reviews", headers=as_(tokens, "dave")).json()
    assert [r["id"] for r in reviews] == [session["id"]]
    own = api.post(
        f"/v1/reviews/{session['id']}/close", headers=as_(tokens, "carol"), json={"note": "fine"}
    )
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_review"
    assert api.get("/v1/reviews", headers=as_(tokens, "alice")).status_code == 403
    closed = api.post(
        f"/v1/reviews/{session['id']}/close",
        headers=as_(tokens, "dave"),
        json={"note": "restarted the stuck job; no data changed"},
    ).json()
    assert (closed["review_state"], closed["reviewed_by"]) == ("closed", "dave")
    assert api.get("/v1/reviews", headers=as_(tokens, "dave")).json() == []
    api.delete(f"/v1/sessions/{session['id']}", headers=as_(tokens, "carol"))

    trail = audit_events(store)
    kinds = [e for e, _, _ in trail]
    assert kinds[:2] == ["breakglass.requested", "breakglass.granted"]
    granted = next(d for e, _, d in trail if e == "breakglass.granted")
    assert (granted["incident"], granted["drill"]) == ("INC-123", False)
    review = next(d for e, _, d in trail if e == "review.closed")
    assert review["note"].startswith("restarted") and review["user"] == "carol"
    assert "session.revoked" in kinds and verify(raw_records(store)).ok


def test_drill_is_recorded_and_announced_as_a_drill(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    session = api.post(
        "/v1/breakglass",
        headers=as_(tokens, "carol"),
        json={
            "target": "demo",
            "incident": "INC-1",
            "reason": "quarterly drill",
            "drill": True,
            "duration_seconds": 60,
        },
    ).json()
    assert session["drill"] is True
    hook = stack.webhooks.wait_for(
        lambda e: e["event"] == "breakglass.drill" and e.get("session_id") == session["id"]
    )
    assert hook["text"].startswith("DRILL") and hook["drill"] is True
    granted = next(d for e, _, d in audit_events(store) if e == "breakglass.granted")
    assert granted["drill"] is True
    api.delete(f"/v1/sessions/{session['id']}", headers=as_(tokens, "carol"))


def _parse(value: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_webhook_bodies_are_json(stack: Stack) -> None:
    lines = stack.webhooks.path.read_text().splitlines() if stack.webhooks.path.exists() else []
    assert all(isinstance(json.loads(line)["text"], str) for line in lines)
