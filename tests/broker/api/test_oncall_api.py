"""On-call tiers through the broker (issue 15, point 1): alice, on call now in a real
iCalendar feed, gets a readonly session without approval, cut at the end of her shift, with
the shift in the audit record; bob, not on call, gets an approval request; the feed gone,
alice does too; ``policy explain`` shows the shift. Real tokens, the suite's PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import OncallSource, Rule, load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration

RULE = {
    "name": "oncall-read",
    "groups": ["dev"],
    "targets": ["demo"],
    "roles": ["readonly"],
    "max_duration": "8h",
    "approvals": 1,
    "approver_groups": ["leads"],
    "oncall": {"source": "primary", "roles": ["readonly"]},
}


def ics_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_feed(path: Path, email: str, ends_in: timedelta) -> datetime:
    """A daily shift of ``email`` that began an hour ago; its end today."""
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(hours=1), now + ends_in
    path.write_text(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//dbaccess tests//EN\r\n"
        "BEGIN:VEVENT\r\nUID:shift@example.com\r\nDTSTAMP:20260101T000000Z\r\n"
        f"SUMMARY:Primary on call\r\nDTSTART:{ics_time(start)}\r\nDTEND:{ics_time(end)}\r\n"
        f"RRULE:FREQ=DAILY\r\nATTENDEE:mailto:{email}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    return end


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    return tmp_path / "oncall.ics"


@pytest.fixture
def api(
    stack: Stack, tmp_path: Path, feed: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "rules": [Rule.model_validate(RULE)],
            "oncall": [OncallSource.model_validate({"name": "primary", "ics": str(feed)})],
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'broker.db'}"}
            ),
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        yield client


def bearer(stack: Stack, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {device_tokens(stack.idp, who)['id_token']}"}


def test_on_call_now_is_granted_until_the_shift_ends(
    api: TestClient, stack: Stack, feed: Path, tmp_path: Path
) -> None:
    shift_end = write_feed(feed, "alice@example.com", timedelta(hours=2))
    alice = bearer(stack, "alice")
    granted = api.post(
        "/v1/sessions",
        headers=alice,
        json={"target": "demo", "role": "readonly", "duration_seconds": 8 * 3600},
    )
    assert granted.status_code == 201, granted.text
    session = granted.json()
    expires = datetime.fromisoformat(session["expires_at"])
    assert abs((expires - shift_end).total_seconds()) <= 2  # cut at the shift's end
    api.delete(f"/v1/sessions/{session['id']}", headers=alice)
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        requested = next(
            r.detail for r in store.audit_records(session["id"]) if r.event == "session.requested"
        )
    finally:
        store.close()
    evidence = requested["on_call"]
    assert evidence["source"] == "primary" and evidence["level"] == 1
    assert evidence["summary"] == "Primary on call"
    assert datetime.fromisoformat(evidence["shift_end"]) == shift_end


def test_not_on_call_or_source_down_asks_for_approval(
    api: TestClient, stack: Stack, feed: Path
) -> None:
    write_feed(feed, "alice@example.com", timedelta(hours=2))
    body = {"target": "demo", "role": "readonly", "reason": "look at a row"}
    pending = api.post("/v1/sessions", headers=bearer(stack, "bob"), json=body)
    assert pending.status_code == 202, pending.text
    assert pending.json()["approvals_required"] == 1


def test_a_missing_feed_never_grants(api: TestClient, stack: Stack, feed: Path) -> None:
    body = {"target": "demo", "role": "readonly", "reason": "look at a row"}
    pending = api.post("/v1/sessions", headers=bearer(stack, "alice"), json=body)
    assert pending.status_code == 202, pending.text


def test_policy_explain_shows_the_shift(stack: Stack, tmp_path: Path, feed: Path) -> None:
    shift_end = write_feed(feed, "alice@example.com", timedelta(hours=3))
    config = tmp_path / "broker.toml"
    config.write_text(
        stack.broker_config.read_text()
        + f'\n[[oncall]]\nname = "primary"\nics = "{feed}"\n'
        + '\n[[rules]]\nname = "oncall-read"\ngroups = ["dev"]\ntargets = ["demo"]\n'
        'roles = ["readonly"]\nmax_duration = "8h"\napprovals = 1\n'
        'approver_groups = ["leads"]\noncall = { source = "primary" }\n'
    )

    def explain(user: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dbaccess.broker", "policy", "explain", "--config",
             str(config), "--user", user, "--groups", "dev", "--target", "demo",
             "--role", "readonly", "--duration", "8h", "--reason", "r"],
            capture_output=True, text=True, timeout=60, env=stack.broker_env(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = explain("alice@example.com")
    assert "without approval: on call in 'primary' (level 1) until " in out
    assert f"to {shift_end:%Y-%m-%d %H:%M} UTC (Primary on call)" in out
    assert "approvals:" not in out
    out = explain("bob@example.com")
    assert "(not on call in 'primary' now)" in out and "approvals: 1 from leads" in out
