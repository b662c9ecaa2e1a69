"""``GET /v1/targets`` says before a request is made whether being on call waives a rule's
approvals, and to the person on call now, until when (issue 15, points 1 and 2)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.cli.app import app
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack
from dbaccess.timestamps import human
from tests.broker.api.test_oncall_api import api, bearer, feed, write_feed
from tests.inprocess import route_cli_to, save_cli_login

pytestmark = pytest.mark.integration
__all__ = ["api", "feed"]  # the fixtures, shared with test_oncall_api


def readonly_on_demo(api: TestClient, stack: Stack, who: str) -> dict[str, object]:
    listed = api.get("/v1/targets", headers=bearer(stack, who))
    assert listed.status_code == 200, listed.text
    (entry,) = [t for t in listed.json() if (t["target"], t["role"]) == ("demo", "readonly")]
    return dict(entry)


def test_the_person_on_call_sees_the_waiver_and_its_end(
    api: TestClient, stack: Stack, feed: Path
) -> None:
    shift_end = write_feed(feed, "alice@example.com", timedelta(hours=2))
    entry = readonly_on_demo(api, stack, "alice")
    assert entry["approvals"] == 1  # the rule's, which the shift waives
    on_call = entry["on_call"]
    assert isinstance(on_call, dict)
    assert on_call["source"] == "primary" and on_call["levels"] == [1]
    assert datetime.fromisoformat(on_call["until"]) == shift_end


def test_someone_not_on_call_sees_the_waiver_without_an_end(
    api: TestClient, stack: Stack, feed: Path
) -> None:
    write_feed(feed, "alice@example.com", timedelta(hours=2))
    entry = readonly_on_demo(api, stack, "bob")
    assert entry["on_call"] == {"source": "primary", "levels": [1], "until": None}


def test_a_shift_ending_within_a_minute_waives_nothing_here_either(
    api: TestClient, stack: Stack, feed: Path
) -> None:
    write_feed(feed, "alice@example.com", timedelta(seconds=30))
    on_call = readonly_on_demo(api, stack, "alice")["on_call"]
    assert isinstance(on_call, dict) and on_call["until"] is None


def logged_in_as(stack: Stack, who: str) -> None:
    """The CLI's default profile, at the in-process broker, logged in as ``who``."""
    token = device_tokens(stack.idp, who)["id_token"]
    save_cli_login(stack.idp.issuer, stack.idp.client_id, token)


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_dbaccess_targets_says_it(
    api: TestClient, stack: Stack, feed: Path, who: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shift_end = write_feed(feed, "alice@example.com", timedelta(hours=2))
    http = route_cli_to(api, monkeypatch)
    try:
        logged_in_as(stack, who)
        result = CliRunner().invoke(app, ["targets"], prog_name="dbaccess", env={"COLUMNS": "200"})
    finally:
        http.close()
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "readonly" in line]
    if who == "alice":
        assert f"no approval: you are on call until {human(shift_end)}" in row
        assert "1 approval(s)" not in row
    else:
        assert "1 approval(s)" in row and "none while on call in primary" in row
