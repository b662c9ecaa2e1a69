"""Tiers through the broker (issue 15, point 2): ``GET /v1/targets`` says where a request
would land before it is made, a request lands there (no approval for readonly, one for
readwrite, one for a long readonly session), and ``policy explain`` names the tier — with
real tokens and the suite's real PostgreSQL target."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import Rule, load_settings
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration

TIERED = """
[[rules]]
name = "tiered"
groups = ["dev"]
targets = ["demo"]
roles = ["readonly", "readwrite"]
max_duration = "8h"
approver_groups = ["leads"]
tiers = [
  { name = "writes", roles = ["readwrite"], approvals = 1 },
  { name = "long", longer_than = "2h", approvals = 1 },
]
"""


@pytest.fixture
def api(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    tiered = Rule.model_validate(
        {"name": "tiered", "groups": ["dev"], "targets": ["demo"],
         "roles": ["readonly", "readwrite"], "max_duration": "8h",
         "approver_groups": ["leads"],
         "tiers": [{"name": "writes", "roles": ["readwrite"], "approvals": 1},
                   {"name": "long", "longer_than": "2h", "approvals": 1}]}
    )  # fmt: skip
    settings = settings.model_copy(
        update={
            "rules": [tiered],
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'broker.db'}"}
            ),
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        yield client


def test_targets_show_the_tier_before_the_request_and_requests_land_there(
    api: TestClient, stack: Stack
) -> None:
    alice = {"Authorization": f"Bearer {device_tokens(stack.idp, 'alice')['id_token']}"}
    terms = {t["role"]: t for t in api.get("/v1/targets", headers=alice).json()}
    assert terms["readonly"]["approvals"] == 0 and terms["readonly"]["tier"] is None
    assert terms["readonly"]["tiers"] == [
        {"name": "long", "approvals": 1, "longer_than_seconds": 7200}
    ]
    assert terms["readwrite"]["approvals"] == 1 and terms["readwrite"]["tier"] == "writes"

    granted = api.post("/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"})
    assert granted.status_code == 201, granted.text  # readonly, an hour: no approval
    api.delete(f"/v1/sessions/{granted.json()['id']}", headers=alice)
    for body, tier in (
        ({"target": "demo", "role": "readwrite", "reason": "fix a row"}, "writes"),
        (
            {
                "target": "demo",
                "role": "readonly",
                "reason": "a long read",
                "duration_seconds": 3 * 3600,
            },
            "long",
        ),
    ):
        pending = api.post("/v1/sessions", headers=alice, json=body)
        assert pending.status_code == 202, pending.text
        assert pending.json()["approvals_required"] == 1
        assert pending.json()["approver_groups"] == ["leads"]
        assert pending.json()["tier"] == tier  # kept with the request, for its approvers
        listed = api.get("/v1/requests?mine=true", headers=alice).json()
        assert [r["tier"] for r in listed if r["id"] == pending.json()["id"]] == [tier]
        api.post(f"/v1/requests/{pending.json()['id']}/withdraw", headers=alice)


def test_policy_explain_names_the_tier(stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(stack.broker_config.read_text() + TIERED)
    result = subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", "policy", "explain", "--config", str(config),
         "--user", "alice@example.com", "--groups", "dev", "--target", "demo",
         "--role", "readonly", "--duration", "3h", "--reason", "a long read"],
        capture_output=True, text=True, timeout=60, env=stack.broker_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "GRANT: granted by rule 'tiered', tier 'long' once approved by 1 member(s)" in (
        result.stdout
    )
    assert "tier: long" in result.stdout and "approvals: 1 from leads" in result.stdout
