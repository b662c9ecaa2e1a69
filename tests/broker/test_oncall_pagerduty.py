"""On-call from PagerDuty's REST API (issue 15, point 1), through its official client,
against a local stand-in over real HTTPS that serves ``GET /oncalls`` as PagerDuty
documents it: wrapped in ``oncalls`` with ``limit``/``offset``/``more`` paging, the user
included (``include[]=users``) with their email, an ``escalation_level``, ``start`` and
``end`` (null for a permanent assignment). PagerDuty itself cannot run here."""

from __future__ import annotations

import http.server
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.identity import Principal
from dbaccess.broker.oncall import Schedules
from dbaccess.broker.policy import AccessRequest, decide
from dbaccess.broker.settings import OncallSource, Rule, load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from dbaccess.sandbox.tls import make_certificates

TOKEN = "u+TestApiKey-0123456789abcdef"  # what the token file holds


def stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(email: str, level: int, start: datetime, end: datetime | None) -> dict[str, Any]:
    return {
        "escalation_policy": {
            "id": "PDB0001",
            "type": "escalation_policy_reference",
            "summary": "Databases",
        },
        "escalation_level": level,
        "schedule": {"id": "SPRIM01", "type": "schedule_reference", "summary": "DB primary"}
        if level == 1
        else None,
        "user": {"id": f"U{level}{email[:3].upper()}", "type": "user", "email": email},
        "start": stamp(start),
        "end": stamp(end),
    }


class StandIn(http.server.BaseHTTPRequestHandler):
    """PagerDuty's ``/oncalls``, as documented; ``mode`` makes it fail in one way."""

    mode = "ok"
    entries: ClassVar[list[dict[str, Any]]] = []
    incidents: ClassVar[dict[str, dict[str, Any]]] = {}
    asked: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        StandIn.asked.append(query)
        if self.headers.get("Authorization") != f"Token token={TOKEN}":
            return self._send(401, {"error": {"message": "Unauthorized", "code": 2006}})
        if StandIn.mode == "hang":
            time.sleep(4)
        if StandIn.mode in ("fail", "limited"):
            return self._send(500 if StandIn.mode == "fail" else 429, {"error": {}})
        if url.path.startswith("/incidents/"):  # GET /incidents/{id}: the id or number
            found = StandIn.incidents.get(url.path.removeprefix("/incidents/"))
            if found is None:
                return self._send(404, {"error": {"message": "Not Found", "code": 2100}})
            return self._send(200, {"incident": found})
        if url.path != "/oncalls":
            return self._send(404, {"error": {"message": "Not Found"}})
        if StandIn.mode == "garbage":
            body = b"<html>maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        limit, offset = int(query.get("limit", ["25"])[0]), int(query.get("offset", ["0"])[0])
        page = StandIn.entries[offset : offset + limit]
        self._send(
            200,
            {
                "oncalls": page,
                "limit": limit,
                "offset": offset,
                "more": offset + limit < len(StandIn.entries),
                "total": None,
            },
        )

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pagerduty(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The stand-in's address and CA, and a token file, as a source's settings."""
    certs = make_certificates(tmp_path / "tls")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "pagerduty.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    try:
        yield {
            "name": "primary",
            "ca_file": str(certs.ca),
            "timeout": "1s",
            "pagerduty": {
                "token_file": str(token),
                "escalation_policy_ids": ["PDB0001"],
                "url": f"https://127.0.0.1:{server.server_address[1]}",
            },
        }
    finally:
        server.shutdown()
        server.server_close()
        StandIn.mode, StandIn.entries = "ok", []
        StandIn.incidents.clear()
        StandIn.asked.clear()


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def schedules(settings: dict[str, Any]) -> Schedules:
    return Schedules([OncallSource.model_validate(settings)])


RULE = {
    "name": "prod",
    "groups": ["dev"],
    "targets": ["prod"],
    "roles": ["readonly"],
    "max_duration": "8h",
    "approvals": 1,
    "approver_groups": ["leads"],
    "oncall": {"source": "primary", "levels": [1]},
}


def person(email: str) -> Principal:
    return Principal(
        subject=email, email=email, email_verified=True, name=None, groups=frozenset({"dev"})
    )


def test_on_call_at_level_one_waives_the_approvals_until_the_shift_ends(
    pagerduty: dict[str, Any],
) -> None:
    started, ends = now() - timedelta(hours=3), now() + timedelta(hours=2)
    StandIn.entries = [
        entry("Alice@Example.com", 1, started, ends),
        entry("bob@example.com", 2, started, ends + timedelta(days=1)),
    ]
    lookup = schedules(pagerduty)
    shift = lookup.shift("primary", "alice@example.com", now())
    assert shift is not None
    assert (shift.level, shift.start, shift.end) == (1, started, ends)
    assert shift.summary == "Databases / DB primary"
    # what the client asked: the policy, the users included, in UTC
    (asked,) = StandIn.asked
    assert asked["escalation_policy_ids[]"] == ["PDB0001"] and asked["include[]"] == ["users"]
    assert asked["time_zone"] == ["UTC"]

    rules = [Rule.model_validate(RULE)]
    want = AccessRequest("prod", "readonly", timedelta(hours=8))
    alice = decide(person("alice@example.com"), want, rules, lookup.shift, now())
    assert alice.approvals_required == 0 and alice.on_call == shift
    assert timedelta(hours=2) - timedelta(seconds=5) <= alice.duration <= timedelta(hours=2)
    # bob is on call at level 2 only: this rule's levels are [1]
    bob = decide(person("bob@example.com"), want, rules, lookup.shift, now())
    assert bob.approvals_required == 1 and bob.on_call is None
    second = Rule.model_validate({**RULE, "oncall": {"source": "primary", "levels": [1, 2]}})
    assert decide(person("bob@example.com"), want, [second], lookup.shift, now()).on_call


def test_every_page_is_read(pagerduty: dict[str, Any]) -> None:
    started, ends = now() - timedelta(hours=1), now() + timedelta(hours=1)
    StandIn.entries = [entry(f"person{i}@example.com", 1, started, ends) for i in range(250)]
    StandIn.entries.append(entry("alice@example.com", 1, started, ends))
    shift = schedules(pagerduty).shift("primary", "alice@example.com", now())
    assert shift is not None  # on the last page
    assert [q["offset"] for q in StandIn.asked[1:]] == [["100"], ["200"]]


def test_a_permanent_assignment_counts_until_the_copy_is_old(pagerduty: dict[str, Any]) -> None:
    StandIn.entries = [entry("alice@example.com", 1, now() - timedelta(days=30), None)]
    lookup = schedules({**pagerduty, "max_age": "10m"})
    shift = lookup.shift("primary", "alice@example.com", now())
    assert shift is not None
    assert timedelta(minutes=9) < shift.end - now() <= timedelta(minutes=10)


def test_a_copy_is_used_for_max_age_at_most(pagerduty: dict[str, Any]) -> None:
    StandIn.entries = [entry("alice@example.com", 1, now(), now() + timedelta(hours=1))]
    lookup = schedules({**pagerduty, "max_age": "10s"})
    assert lookup.shift("primary", "alice@example.com", now()) is not None
    StandIn.entries = []
    assert lookup.shift("primary", "alice@example.com", now()) is not None  # the copy
    assert len(StandIn.asked) == 1


@pytest.mark.parametrize("mode", ["fail", "limited", "hang", "garbage", "bad-token"])
def test_a_source_that_fails_gives_no_shift_within_its_timeout(
    pagerduty: dict[str, Any], mode: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    StandIn.entries = [entry("alice@example.com", 1, now(), now() + timedelta(hours=1))]
    if mode == "bad-token":
        Path(pagerduty["pagerduty"]["token_file"]).write_text("u+WrongKey-secret-9876\n")
    else:
        StandIn.mode = mode
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    shift = schedules(pagerduty).shift("primary", "alice@example.com", now())
    took = time.monotonic() - started
    assert shift is None
    assert took < 2.5  # its timeout (1 s), no retry loop, no cooldown sleeps
    assert "on-call source 'primary' is unavailable" in caplog.text
    for secret in (TOKEN, "u+WrongKey-secret-9876", "9876", "cdef"):
        assert secret not in caplog.text  # not even the client's truncated key


def test_a_missing_token_file_gives_no_shift(
    pagerduty: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    Path(pagerduty["pagerduty"]["token_file"]).unlink()
    assert schedules(pagerduty).shift("primary", "alice@example.com", now()) is None
    assert "the token file: No such file or directory" in caplog.text
    assert StandIn.asked == []


def test_an_untrusted_certificate_gives_no_shift(pagerduty: dict[str, Any]) -> None:
    StandIn.entries = [entry("alice@example.com", 1, now(), now() + timedelta(hours=1))]
    public_cas_only = {k: v for k, v in pagerduty.items() if k != "ca_file"}
    assert schedules(public_cas_only).shift("primary", "alice@example.com", now()) is None
    assert StandIn.asked == []  # nothing was sent, the key least of all


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ics": "/x.ics"}, "either ics or pagerduty"),
        ({"pagerduty": None}, "either ics or pagerduty"),
        ({"pagerduty": {"token_file": "t", "escalation_policy_ids": []}}, "at least 1"),
        (
            {"pagerduty": {"token_file": "t", "escalation_policy_ids": ["P1'--"]}},
            "should match pattern",
        ),
        (
            {
                "pagerduty": {
                    "token_file": "t",
                    "escalation_policy_ids": ["P1"],
                    "url": "http://api.pagerduty.com",
                }
            },
            "https:// address",
        ),
    ],
)
def test_a_pagerduty_source_is_checked(
    pagerduty: dict[str, Any], change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OncallSource.model_validate({**pagerduty, **change})


@pytest.mark.integration
def test_through_the_broker_the_grant_carries_pagerdutys_evidence(
    pagerduty: dict[str, Any], stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real tokens, the suite's PostgreSQL: alice, on call at level 1, gets readonly on
    demo at once, cut at the shift's end, and the audit record says where that came from."""
    ends = now() + timedelta(hours=1)
    StandIn.entries = [entry("alice@example.com", 1, now() - timedelta(hours=1), ends)]
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    rule = {**API_RULE, "oncall": {"source": "primary", "roles": ["readonly"]}}
    settings = settings.model_copy(
        update={
            "rules": [Rule.model_validate(rule)],
            "oncall": [OncallSource.model_validate(pagerduty)],
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'broker.db'}"}
            ),
        }
    )
    alice = {"Authorization": f"Bearer {device_tokens(stack.idp, 'alice')['id_token']}"}
    with TestClient(create_app(settings, run_reaper=False)) as api:
        granted = api.post(
            "/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"}
        )
        assert granted.status_code == 201, granted.text
        session = granted.json()
        assert abs((datetime.fromisoformat(session["expires_at"]) - ends).total_seconds()) <= 2
        assert api.delete(f"/v1/sessions/{session['id']}", headers=alice).status_code < 300
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        (requested,) = [
            r.detail for r in store.audit_records(session["id"]) if r.event == "session.requested"
        ]
    finally:
        store.close()
    assert requested["on_call"]["source"] == "primary"
    assert requested["on_call"]["level"] == 1
    assert requested["on_call"]["summary"] == "Databases / DB primary"


API_RULE = {
    "name": "oncall-read",
    "groups": ["dev"],
    "targets": ["demo"],
    "roles": ["readonly"],
    "max_duration": "8h",
    "approvals": 1,
    "approver_groups": ["leads"],
}
