"""An incident review of a break-glass session through the gateway, end to end: the real
CLI breaks the glass on the gateway target, psql runs a read and a DDL the role's
guardrails refuse, the session is ended, and a reviewer's ``dbaccess review INC-...``
shows the gateway's own records of it, flagged, as JSON and as an HTML page."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dbaccess.sandbox.stack import Stack
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration


def report(cli: Cli, incident: str) -> dict[str, Any]:
    shown = cli.run("--profile", "reviewer", "review", incident, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_a_gateway_breakglass_session_is_reviewed_from_the_gateway_records(
    gw_cli: Cli, gw_stack: Stack, tmp_path: Path
) -> None:
    assert gw_cli.login("carol", profile="oncall").returncode == 0
    assert gw_cli.login("dave", profile="reviewer").returncode == 0
    broke = gw_cli.run(
        "--json",
        "--profile",
        "oncall",
        "breakglass",
        "vault",
        "--incident",
        "INC-9001",
        "--reason",
        "<script>alert(1)</script> orders stuck",
        "--",
        "-c",
        "select count(*) from orders",
        "-c",
        "create table review_probe (id int)",
    )
    session = json.loads(broke.stderr.strip().splitlines()[-1])["data"]
    assert session["kind"] == "breakglass", broke.stderr
    ended = gw_cli.run("--profile", "oncall", "revoke", session["id"])
    assert ended.returncode == 0, ended.stderr

    deadline = time.monotonic() + 15
    found = report(gw_cli, "INC-9001")
    while len(found["sessions"][0]["statements"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)  # the gateway writes its records in batches
        found = report(gw_cli, "INC-9001")
    [reviewed] = found["sessions"]
    assert reviewed["id"] == session["id"] and reviewed["access"] == "gateway"
    sql = [(s["sql"], s["classes"], s["status"]) for s in reviewed["statements"]]
    assert ("select count(*) from orders", ["read"], "completed") in sql
    assert ("create table review_probe (id int)", ["ddl"], "refused") in sql
    assert reviewed["chain_ok"] is True and reviewed["revoked_at"] is not None
    kinds = {f["kind"] for f in found["flags"]}
    assert {"ddl", "outside_scope"} <= kinds  # the refused DDL, outside the role's classes

    page = tmp_path / "INC-9001.html"
    html = gw_cli.run(
        "--profile", "reviewer", "review", "INC-9001", "--format", "html", "-o", str(page)
    )
    assert html.returncode == 0, html.stderr
    text = page.read_text()
    assert "<svg" in text and "create table review_probe" in text
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
