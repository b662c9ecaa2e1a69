"""The audit view shows what matters (issue 12, point 13): ``GET /v1/audit`` and
``dbaccess audit`` show the newest records first, page with an opaque, checked cursor, and
apply every filter before the limit — through the broker in-process with real tokens and
a real PostgreSQL target, over a trail longer than a page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.cli.app import app as cli
from dbaccess.client import context as cli_api
from dbaccess.client.auth.token_store import StoredLogin, save_login
from dbaccess.client.config import Profile, ProfileFile
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from tests.inprocess import Shared

pytestmark = pytest.mark.integration

NOISE = 150  # records about another target, newer than the ones looked for


@pytest.fixture(scope="module")
def trail(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A store whose oldest records are 3 real sessions of alice on 'demo' (requested,
    granted, revoke requested, revoked: 12 records), followed by NOISE denials on 'shop'
    — so a filter applied after the LIMIT would find nothing on the first pages."""
    db = tmp_path_factory.mktemp("audit-pages") / "audit.db"
    store = Store(f"sqlite:///{db}")
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"})}
    )
    import os

    os.environ[PROVISIONER_ENV] = stack.provisioner_password
    from dbaccess.sandbox.idp import device_tokens

    alice = {"Authorization": f"Bearer {device_tokens(stack.idp, 'alice')['id_token']}"}
    with TestClient(create_app(settings, store=store, run_reaper=False)) as api:
        for _ in range(3):
            made = api.post(
                "/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"}
            )
            assert made.status_code == 201, made.text
            api.delete(f"/v1/sessions/{made.json()['id']}", headers=alice)
    demo_seqs = [r.seq for r in store.audit_records()]
    now = datetime.now(UTC)
    for i in range(NOISE):
        store.record(
            now,
            "session.denied",
            "mallory",
            {"target": "shop", "role": "readonly", "explanation": f"noise {i}"},
        )
    store.close()
    return db, sorted(demo_seqs, reverse=True)


@pytest.fixture
def api(
    stack: Stack, trail: tuple[Path, list[int]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"store": f"sqlite:///{trail[0]}"})}
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        yield client


def test_newest_first_and_every_filter_before_the_limit(
    api: TestClient, tokens: dict[str, str], trail: tuple[Path, list[int]]
) -> None:
    dave = {"Authorization": f"Bearer {tokens['dave']}"}
    _, demo = trail
    newest = api.get("/v1/audit", headers=dave)
    assert newest.status_code == 200
    seqs = [r["seq"] for r in newest.json()]
    assert len(seqs) == 100  # the default page
    assert seqs == sorted(seqs, reverse=True) and seqs[0] == len(demo) + NOISE

    # the 12 demo records are older than 150 others: found anyway, newest first
    on_demo = api.get("/v1/audit", params={"target": "demo", "limit": 5}, headers=dave)
    assert [r["seq"] for r in on_demo.json()] == demo[:5]
    granted = api.get(
        "/v1/audit",
        params={
            "target": "demo",
            "type": "session.granted",
            "user": "alice@example.com",
            "limit": 2,
        },
        headers=dave,
    )
    assert [r["event"] for r in granted.json()] == ["session.granted"] * 2
    assert granted.headers["X-Next-Cursor"]

    # page by page to the end: every demo record once, in order, then no cursor
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"target": "demo", "limit": 5}
        if cursor:
            params["before"] = cursor
        page = api.get("/v1/audit", params=params, headers=dave)
        assert page.status_code == 200, page.text
        seen += [r["seq"] for r in page.json()]
        pages += 1
        cursor = page.headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert seen == demo and pages == 3


def test_a_bad_cursor_or_limit_is_a_clear_4xx(api: TestClient, tokens: dict[str, str]) -> None:
    dave = {"Authorization": f"Bearer {tokens['dave']}"}
    first = api.get("/v1/audit", params={"target": "shop", "limit": 10}, headers=dave)
    cursor = first.headers["X-Next-Cursor"]
    assert "shop" not in cursor  # opaque
    for bad in (
        "",
        "12",
        "a1.",
        "a1.!!!!",
        cursor[:-2],
        cursor + "A",
        "a1." + "A" * 80,
        "a1.MC4wMDAwMDAwMDAwMDAwMDAw",
    ):  # "0.0000000000000000": seq 0
        answer = api.get("/v1/audit", params={"target": "shop", "before": bad}, headers=dave)
        assert answer.status_code in (400, 422), (bad, answer.text)
        assert answer.json()["error"]["code"] in ("invalid_cursor", "invalid_request")
    other = api.get("/v1/audit", params={"target": "demo", "before": cursor}, headers=dave)
    assert other.status_code == 400
    assert other.json()["error"] == {
        "code": "invalid_cursor",
        "message": "before: that cursor belongs to a query with other filters",
        "hint": "repeat the filters of the page it came from, or leave out --before",
    }
    for limit in (0, 1001, -1):
        answer = api.get("/v1/audit", params={"limit": limit}, headers=dave)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request"
    same = api.get(
        "/v1/audit", params={"target": "shop", "limit": 10, "before": cursor}, headers=dave
    )
    assert [r["seq"] for r in same.json()] == [r["seq"] - 10 for r in first.json()]


def test_the_cli_pages_with_before(
    api: TestClient,
    stack: Stack,
    tokens: dict[str, str],
    trail: tuple[Path, list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_api, "http_client", lambda: Shared(api))
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", "http://testserver")
    profiles.save()
    token = tokens["dave"]
    claims = jwt.decode(token, options={"verify_signature": False})
    save_login(
        "default",
        StoredLogin(
            issuer=stack.idp.issuer,
            client_id=stack.idp.client_id,
            scopes=["openid"],
            id_token=token,
            refresh_token=None,
            expires_at=claims["exp"],
            subject="dave",
        ),
    )
    _, demo = trail

    human = CliRunner().invoke(
        cli, ["audit", "--target", "demo", "--limit", "5"], prog_name="dbaccess"
    )
    assert human.exit_code == 0, human.output
    rows = [
        line.split()[0]
        for line in human.stdout.splitlines()
        if line.split() and line.split()[0].isdigit()
    ]
    assert rows == [str(s) for s in demo[:5]]
    [more] = [line for line in human.stderr.splitlines() if line.startswith("more: ")]
    assert more.startswith("more: dbaccess audit --target demo --limit 5 --before a1.")

    seen: list[int] = []
    args = ["--json", "audit", "--target", "demo", "--limit", "5"]
    while True:
        result = CliRunner().invoke(cli, args, prog_name="dbaccess")
        assert result.exit_code == 0, result.output
        page = json.loads(result.stdout)
        seen += [r["seq"] for r in page["data"]]
        if page["next"] is None:
            break
        args = ["--json", "audit", "--target", "demo", "--limit", "5", "--before", page["next"]]
    assert seen == demo

    wrong = CliRunner().invoke(
        cli, ["--json", "audit", "--before", "nonsense"], prog_name="dbaccess"
    )
    assert wrong.exit_code != 0
    assert json.loads(wrong.stdout)["error"]["message"] == (
        "before: not a cursor this broker gave out"
    )
