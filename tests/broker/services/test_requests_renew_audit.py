"""Withdrawn and reused requests, ids by prefix, renewals that never shorten, the audit
filters, and denials that say what is allowed — through the broker's API in-process, with
real tokens, real PostgreSQL and MariaDB targets and the real webhook receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.audit_events import AUDIT_EVENTS
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.broker.store import Store, approval_requests, leases
from dbaccess.broker.store.audit_chain import raw_records, verify
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


def _settings(stack: Stack, db: Path, **changes: Any) -> Settings:
    settings = load_settings(stack.broker_config)
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"}),
            **changes,
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
    app = create_app(_settings(stack, tmp_path / "api.db"), store=store, run_reaper=False)
    with TestClient(app) as client:
        yield client


def as_(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def error(answer: Any) -> dict[str, str]:
    return answer.json()["error"]  # type: ignore[no-any-return]


def events(store: Store, event: str) -> list[dict[str, Any]]:
    return [r.detail for r in store.audit_records(event=event)]


WANT = {"target": "demo", "role": "readwrite", "reason": "fix order 7"}


# --- withdraw -----------------------------------------------------------------------


def test_the_requester_withdraws_and_then_nobody_can_approve_or_use_it(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    rid = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=WANT).json()["id"]
    stranger = api.post(f"/v1/requests/{rid}/withdraw", headers=as_(tokens, "bob"))
    assert stranger.status_code == 404  # not his, not his approver group: not even shown
    approver = api.post(f"/v1/requests/{rid}/withdraw", headers=as_(tokens, "erin"))
    assert approver.status_code == 403
    assert error(approver) == {
        "code": "not_requester",
        "message": f"request {rid} is alice@example.com's: only the requester withdraws a request",
        "hint": f"to refuse it: dbaccess deny {rid} --reason ...",
    }
    assert api.get(f"/v1/requests/{rid}", headers=as_(tokens, "alice")).json()["state"] == (
        "pending"
    )

    done = api.post(f"/v1/requests/{rid}/withdraw", headers=as_(tokens, "alice"))
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "withdrawn"
    late = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, "erin"))
    assert late.status_code == 409
    assert error(late)["message"] == f"request {rid} is withdrawn, not pending"
    used = api.post("/v1/sessions", headers=as_(tokens, "alice"), json={**WANT, "request_id": rid})
    assert used.status_code == 409
    assert error(used)["code"] == "request_withdrawn"
    assert error(used)["message"] == f"request {rid} was withdrawn: it cannot be used"
    again = api.post(f"/v1/requests/{rid}/withdraw", headers=as_(tokens, "alice"))
    assert again.status_code == 409
    assert "withdrawn: there is nothing to withdraw" in error(again)["message"]
    offered = api.get("/v1/requests", headers=as_(tokens, "erin")).json()
    assert rid not in [r["id"] for r in offered]  # approvers are not asked any more

    assert [(d["request_id"], d["was"]) for d in events(store, "request.withdrawn")] == [
        (rid, "pending")
    ]
    assert verify(raw_records(store)).ok
    hook = stack.webhooks.wait_for(
        lambda e: e["event"] == "request.withdrawn" and e["request_id"] == rid
    )
    assert hook["state"] == "withdrawn" and "alice" in hook["text"]


def test_an_approved_unused_request_can_be_withdrawn_too(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    before = stack.managed_users()
    rid = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=WANT).json()["id"]
    for lead in ("erin", "frank"):
        assert api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, lead)).is_success
    assert api.post(f"/v1/requests/{rid}/withdraw", headers=as_(tokens, "alice")).is_success
    used = api.post("/v1/sessions", headers=as_(tokens, "alice"), json={**WANT, "request_id": rid})
    assert used.status_code == 409 and error(used)["code"] == "request_withdrawn"
    assert stack.managed_users() == before


# --- asking again reuses the open request ----------------------------------------------


def test_asking_again_returns_the_open_request_instead_of_a_new_one(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    first = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=WANT)
    assert first.status_code == 202
    rid = first.json()["id"]
    # A retry may leave out the reason (a retry after Ctrl-C is not asked for it again)...
    for body in (WANT, {"target": "demo", "role": "readwrite"}, {**WANT, "duration_seconds": 3600}):
        again = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=body)
        assert (again.status_code, again.json()["id"]) == (202, rid), body
    # ...but one that asks for something else is told, not silently merged.
    other = api.post(
        "/v1/sessions",
        headers=as_(tokens, "alice"),
        json={**WANT, "reason": "something else", "duration_seconds": 600},
    )
    assert other.status_code == 409
    assert error(other) == {
        "code": "request_open",
        "message": f"you already have request {rid} (pending) for readwrite on demo, and you "
        "asked for another duration 10m (the open request has 1h); reason 'something else' "
        "(the open request has 'fix order 7')",
        "hint": f"use it: dbaccess connect demo --role readwrite --request {rid}; or withdraw "
        f"it first: dbaccess withdraw {rid}",
    }
    # Other people, roles and targets are not affected.
    erin = api.post("/v1/sessions", headers=as_(tokens, "erin"), json=WANT).json()["id"]
    shop = api.post(
        "/v1/sessions", headers=as_(tokens, "alice"), json={**WANT, "target": "shop"}
    ).json()["id"]
    assert len({rid, erin, shop}) == 3

    # Approved but unused: a retry gets the approved request, which the CLI then uses.
    for lead in ("erin", "frank"):
        assert api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, lead)).is_success
    approved = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=WANT)
    assert (approved.status_code, approved.json()["id"], approved.json()["state"]) == (
        202,
        rid,
        "approved",
    )
    session = api.post(
        "/v1/sessions", headers=as_(tokens, "alice"), json={**WANT, "request_id": rid}
    ).json()
    fresh = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=WANT).json()
    assert fresh["state"] == "pending" and fresh["id"] != rid  # used: a new ask is new
    api.delete(f"/v1/sessions/{session['id']}", headers=as_(tokens, "alice"))

    created = [d["request_id"] for d in events(store, "request.created")]
    assert sorted(created) == sorted([rid, erin, shop, fresh["id"]])  # no duplicates
    # ...but every ask that got it back is on the trail: three retries, one after approval
    reused = events(store, "request.reused")
    assert [(d["request_id"], d["state"]) for d in reused] == [(rid, "pending")] * 3 + [
        (rid, "approved")
    ]
    assert all(
        d["target"] == "demo" and d["role"] == "readwrite" and "source" in d and "user_agent" in d
        for d in reused
    )
    assert [
        e["request_id"]
        for e in stack.webhooks.events
        if e["event"] == "request.created" and e["request_id"] == rid
    ] == [rid]


def test_concurrent_asks_at_two_replicas_open_one_request(
    stack: Stack, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two brokers sharing one store, eight identical asks at once: one request."""
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    db = tmp_path / "shared.db"
    stores = [Store(f"sqlite:///{db}") for _ in range(2)]
    apps = [create_app(_settings(stack, db), store=s, run_reaper=False) for s in stores]
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda i: (one, two)[i % 2].post(
                        "/v1/sessions", headers=as_(tokens, "alice"), json=WANT
                    ),
                    range(8),
                )
            )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(stores[0].requests()) == 1
    assert len(events(stores[0], "request.created")) == 1
    assert len(events(stores[0], "request.reused")) == 7  # the other asks, each recorded


# --- ids by prefix -------------------------------------------------------------------


def _lease(store: Store, lease_id: str, subject: str) -> None:
    """A live lease row with an id chosen by the test (real ids are random)."""
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(
            leases.insert().values(
                id=lease_id,
                subject=subject,
                target="demo",
                role="readonly",
                engine="postgres",
                db_user=f"dba_{subject}_{lease_id[:6]}",
                state="active",
                created_at=now,
                expires_at=now + timedelta(minutes=30),
                attempts=0,
            )
        )


def _request(store: Store, request_id: str, subject: str, groups: list[str]) -> None:
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(
            approval_requests.insert().values(
                id=request_id,
                subject=subject,
                target="shop",
                role="readwrite",
                duration_seconds=600,
                reason="prefix test",
                rule="dev-readwrite",
                approvals_required=2,
                approver_groups=json.dumps(groups),
                state="pending",
                approvals="[]",
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )


def test_session_and_request_ids_by_unique_prefix(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    alice, bob = as_(tokens, "alice"), as_(tokens, "bob")
    session = api.post(
        "/v1/sessions",
        headers=alice,
        json={"target": "demo", "role": "readonly", "duration_seconds": 600},
    ).json()
    prefix = session["id"][:8]
    renewed = api.post(
        f"/v1/sessions/{prefix.upper()}/renew", headers=alice, json={"duration_seconds": 1200}
    )
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["id"] == session["id"] and renewed.json()["changed"] is True
    assert api.delete(f"/v1/sessions/{prefix}", headers=bob).status_code == 404  # not bob's
    revoked = api.delete(f"/v1/sessions/{prefix}", headers=alice)
    assert revoked.json()["state"] == "revoked"
    assert session["db_user"] not in stack.managed_users()

    short = api.delete(f"/v1/sessions/{session['id'][:3]}", headers=alice)
    assert short.status_code == 422
    assert error(short) == {
        "code": "invalid_request",
        "message": f"'{session['id'][:3]}' is too short to name a session: give at least 4 "
        "characters of its id",
        "hint": "dbaccess sessions lists them",
    }
    wild = api.delete("/v1/sessions/%25%25%25%25", headers=alice)  # '%%%%' is no LIKE here
    assert wild.status_code == 404

    # Ambiguous: only the caller's own candidates are named, never bob's.
    mine = ["abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"]
    for lease_id in mine:
        _lease(store, lease_id, "alice")
    _lease(store, "abcd3333-0000-4000-8000-000000000000", "bob")
    ambiguous = api.post("/v1/sessions/abcd/renew", headers=alice, json={})
    assert ambiguous.status_code == 409
    assert error(ambiguous) == {
        "code": "ambiguous_id",
        "message": f"'abcd' is the start of 2 sessions you can see: {mine[0]}, {mine[1]}",
        "hint": "give more characters of the id (dbaccess sessions lists them)",
    }
    assert "abcd3333" not in ambiguous.text
    bobs = api.delete("/v1/sessions/abcd", headers=bob)  # unique among bob's: his own
    assert bobs.json()["id"] == "abcd3333-0000-4000-8000-000000000000"

    # Requests: approvers see requests of their groups; others see nothing.
    _request(store, "beef0001-0000-4000-8000-000000000000", "alice", ["leads"])
    _request(store, "beef0002-0000-4000-8000-000000000000", "alice", ["leads"])
    _request(store, "beef0003-0000-4000-8000-000000000000", "mallory", ["sre"])
    two = api.get("/v1/requests/beef", headers=as_(tokens, "erin"))
    assert two.status_code == 409 and error(two)["code"] == "ambiguous_id"
    assert "beef0001" in error(two)["message"] and "beef0003" not in two.text
    assert api.get("/v1/requests/beef", headers=as_(tokens, "carol")).status_code == 404
    # Deciding takes 8 characters: a requester cannot grind ids until a new request starts
    # like the one an approver is typing.
    short = api.post("/v1/requests/beef000/approve", headers=as_(tokens, "erin"))
    assert short.status_code == 422 and "give at least 8 characters" in error(short)["message"]
    one = api.post("/v1/requests/beef0002/approve", headers=as_(tokens, "erin")).json()
    assert one["id"] == "beef0002-0000-4000-8000-000000000000" and len(one["approvals"]) == 1
    withdrawn = api.post("/v1/requests/beef0001/withdraw", headers=alice).json()
    assert withdrawn["state"] == "withdrawn"
    early = api.post(
        "/v1/sessions",
        headers=alice,
        json={"target": "shop", "role": "readwrite", "request_id": "beef0002"},
    )
    assert early.status_code == 409 and error(early)["code"] == "request_pending"


# --- renew never shortens -------------------------------------------------------------


def test_renew_never_shortens_unless_asked(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    alice = as_(tokens, "alice")

    def valid_until(user: str) -> datetime:
        with stack.postgres.connect() as admin:
            row = admin.execute(
                "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", (user,)
            ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def maria_expiry(user: str) -> datetime:
        conn = stack.mariadb.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT expires_at FROM dbaccess.managed_users WHERE username = %s", (user,)
                )
                row = cur.fetchone()
        finally:
            conn.close()
        assert row is not None
        return row[0].replace(tzinfo=UTC)  # type: ignore[no-any-return]

    for target, expiry in (("demo", valid_until), ("shop", maria_expiry)):
        session = api.post(
            "/v1/sessions",
            headers=alice,
            json={"target": target, "role": "readonly", "duration_seconds": 3000},
        ).json()
        ends = datetime.fromisoformat(session["expires_at"])
        path = f"/v1/sessions/{session['id']}/renew"
        kept = api.post(path, headers=alice, json={"duration_seconds": 600})
        assert kept.status_code == 200, kept.text
        assert (kept.json()["changed"], kept.json()["expires_at"]) == (False, session["expires_at"])
        assert expiry(session["db_user"]) == ends  # the database's clock did not move
        shortened = api.post(path, headers=alice, json={"duration_seconds": 600, "shorten": True})
        assert shortened.json()["changed"] is True
        new_end = datetime.fromisoformat(shortened.json()["expires_at"])
        assert new_end < ends - timedelta(minutes=30)
        assert datetime.fromisoformat(shortened.json()["previous_expires_at"]) == ends
        assert expiry(session["db_user"]) == new_end  # ...and now it did, earlier
        renewed = [
            d for d in events(store, "session.renewed") if d["db_user"] == session["db_user"]
        ]
        assert len(renewed) == 1  # the no-op left no record; the shortening did
        api.delete(f"/v1/sessions/{session['id']}", headers=alice)

    too_long = api.post(
        "/v1/sessions",
        headers=alice,
        json={"target": "demo", "role": "readonly", "duration_seconds": 600},
    ).json()
    refused = api.post(
        f"/v1/sessions/{too_long['id']}/renew", headers=alice, json={"duration_seconds": 7200}
    )
    assert refused.status_code == 403
    hint = error(refused)["hint"]
    assert hint.startswith(
        f"it may last 1h in all; the most left: dbaccess renew {too_long['id']} --duration "
    )
    assert hint.rsplit(" ", 1)[1] in ("59m", "58m")
    api.delete(f"/v1/sessions/{too_long['id']}", headers=alice)


# --- audit filters -------------------------------------------------------------------


def test_audit_by_email_and_known_event_types(api: TestClient, tokens: dict[str, str]) -> None:
    alice, dave = as_(tokens, "alice"), as_(tokens, "dave")
    session = api.post(
        "/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"}
    ).json()
    api.delete(f"/v1/sessions/{session['id']}", headers=alice)
    api.post(
        "/v1/sessions", headers=as_(tokens, "bob"), json={"target": "demo", "role": "readonly"}
    )
    by_subject = api.get("/v1/audit", params={"user": "alice"}, headers=dave).json()
    by_email = api.get("/v1/audit", params={"user": "Alice@Example.com"}, headers=dave).json()
    assert by_email == by_subject and by_email
    assert {r["subject"] for r in by_email} == {"alice"}
    assert api.get("/v1/audit", params={"user": "nobody@example.com"}, headers=dave).json() == []
    granted = api.get(
        "/v1/audit", params={"type": "session.granted", "user": "alice"}, headers=dave
    ).json()
    assert [r["lease_id"] for r in granted] == [session["id"]]

    unknown = api.get("/v1/audit", params={"type": "session.grant"}, headers=dave)
    assert unknown.status_code == 422
    assert error(unknown) == {
        "code": "invalid_request",
        "message": "type: 'session.grant' is not an audit event type",
        "hint": "one of: " + ", ".join(AUDIT_EVENTS),
    }


# --- denials that say what is allowed -------------------------------------------------


def test_denials_name_what_the_person_may_request(
    stack: Stack, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = _settings(stack, tmp_path / "d.db")
    readonly_on_demo = settings.rules[0].model_copy(update={"targets": ["demo"]})
    narrow = settings.model_copy(update={"rules": [readonly_on_demo]})
    with TestClient(create_app(narrow, run_reaper=False)) as api:

        def ask(who: str, **body: Any) -> dict[str, str]:
            answer = api.post("/v1/sessions", headers=as_(tokens, who), json=body)
            assert answer.status_code == 403, answer.text
            return error(answer)

        assert ask("alice", target="demo", role="readwrite") == {
            "code": "denied",
            "message": "no rule grants you that role on 'demo'; there you may request: readonly",
            "hint": "dbaccess connect demo --role readonly",
        }
        assert ask("alice", target="shop", role="readonly") == {
            "code": "denied",
            "message": "no rule grants you any role on 'shop'; you may use: demo",
            "hint": "dbaccess targets lists the targets and roles you may request",
        }
        assert ask("frank", target="demo", role="readonly") == {
            "code": "denied",
            "message": "no rule of this broker grants you access to 'demo' or any other target",
            "hint": "ask an administrator to add you to a group the broker's rules name",
        }
        assert ask("alice", target="demo", role="readonly", duration_seconds=7200) == {
            "code": "denied",
            "message": "rule 'dev-readonly' allows at most 1h",
            "hint": "ask for at most 1h: dbaccess connect demo --role readonly --duration 1h",
        }

        body = {"target": "demo", "incident": "whatever", "reason": "orders stuck"}
        wrong = api.post("/v1/breakglass", headers=as_(tokens, "carol"), json=body)
        assert error(wrong) == {
            "code": "denied",
            "message": "incident id 'whatever' does not match INC-[0-9]+: give an id like INC-123",
            "hint": "dbaccess breakglass demo --incident INC-123 --reason ...",
        }
        long = api.post(
            "/v1/breakglass",
            headers=as_(tokens, "carol"),
            json={**body, "incident": "INC-9", "duration_seconds": 7200},
        )
        assert error(long)["hint"] == (
            "ask for at most 1h (or leave out --duration): dbaccess breakglass demo "
            "--incident INC-9 --duration 1h --reason ..."
        )
        outsider = api.post("/v1/breakglass", headers=as_(tokens, "alice"), json=body)
        assert error(outsider)["hint"] == (
            "for everyday access, dbaccess targets lists what you may request"
        )


def test_a_review_is_closed_by_a_prefix_of_its_session_id(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    opened = api.post(
        "/v1/breakglass",
        headers=as_(tokens, "carol"),
        json={"target": "demo", "incident": "INC-5", "reason": "drill", "drill": True},
    ).json()
    api.delete(f"/v1/sessions/{opened['id']}", headers=as_(tokens, "carol"))
    short = api.post(
        f"/v1/reviews/{opened['id'][:2]}/close", headers=as_(tokens, "dave"), json={"note": "fine"}
    )
    assert short.status_code == 422
    closed = api.post(
        f"/v1/reviews/{opened['id'][:6]}/close", headers=as_(tokens, "dave"), json={"note": "fine"}
    )
    assert closed.status_code == 200, closed.text
    assert (closed.json()["id"], closed.json()["reviewed_by"]) == (opened["id"], "dave")


def test_a_second_account_of_the_same_person_neither_approves_nor_reviews(
    api: TestClient, tokens: dict[str, str], store: Store
) -> None:
    # erin's other account (another subject, her email in another letter case) asked
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(
            approval_requests.insert().values(
                id="cafe0001-0000-4000-8000-000000000000",
                subject="erin-admin",
                email="Erin@Example.com",
                target="shop",
                role="readwrite",
                duration_seconds=600,
                reason="second account",
                rule="dev-readwrite",
                approvals_required=2,
                approver_groups=json.dumps(["leads"]),
                state="pending",
                approvals="[]",
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
        )
        conn.execute(
            leases.insert().values(
                id="cafe0002-0000-4000-8000-000000000000",
                subject="carol-admin",
                email="CAROL@example.com",
                target="demo",
                role="readwrite",
                engine="postgres",
                db_user="dba_caroladmin_cafe02",
                state="revoked",
                kind="breakglass",
                incident="INC-9",
                created_at=now,
                expires_at=now + timedelta(minutes=30),
                revoked_at=now,
                attempts=0,
            )
        )
    own = api.post(
        "/v1/requests/cafe0001-0000-4000-8000-000000000000/approve", headers=as_(tokens, "erin")
    )
    assert own.status_code == 403 and error(own)["code"] == "self_approval"
    other = api.post(
        "/v1/requests/cafe0001-0000-4000-8000-000000000000/approve", headers=as_(tokens, "frank")
    )
    assert other.status_code == 200, other.text  # a different person may
    review = api.post(
        "/v1/reviews/cafe0002-0000-4000-8000-000000000000/close",
        headers=as_(tokens, "carol"),
        json={"note": "all fine"},
    )
    assert review.status_code == 403 and error(review)["code"] == "self_review"


def test_an_approval_the_policy_has_outgrown_since_does_not_redeem(
    api: TestClient,
    tokens: dict[str, str],
    stack: Stack,
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = api.post("/v1/sessions", headers=as_(tokens, "alice"), json=WANT).json()
    rid, needed = made["id"], made["approvals_required"]
    for approver in ("erin", "frank")[:needed]:
        approved = api.post(f"/v1/requests/{rid}/approve", headers=as_(tokens, approver))
        assert approved.status_code == 200, approved.text
    assert api.get(f"/v1/requests/{rid}", headers=as_(tokens, "alice")).json()["state"] == (
        "approved"
    )
    # then the rule is tightened (a reload): one approval more than it had
    settings = _settings(stack, tmp_path / "api.db")
    tighter = [
        r.model_copy(update={"approvals": r.approvals + 1}) if r.approvals else r
        for r in settings.rules
    ]
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    app = create_app(settings.model_copy(update={"rules": tighter}), store=store, run_reaper=False)
    before = set(stack.managed_users())
    with TestClient(app) as now:
        used = now.post(
            "/v1/sessions", headers=as_(tokens, "alice"), json={**WANT, "request_id": rid}
        )
    assert used.status_code == 403, used.text
    assert error(used)["code"] == "approval_required"
    assert f"now needs {needed + 1} approval(s)" in error(used)["message"]
    assert set(stack.managed_users()) == before  # no user was made for it
