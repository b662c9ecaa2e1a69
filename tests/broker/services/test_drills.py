"""Drills on a schedule (issue 15, point 6): with ``[breakglass] drill_every``, a broker
where no drill ran for that long says so — an audit record and a webhook at most once a
day, and the break-glass policy the CLI's ``targets`` reads — and ``/v1/drills``
(``dbaccess review --drills``) lists everyone's last drill. In-process broker, real
tokens, a real PostgreSQL target, the stack's real webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'api.db'}")


@pytest.fixture
def api(
    stack: Stack, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    assert settings.breakglass is not None
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'api.db'}"}
            ),
            "breakglass": settings.breakglass.model_copy(
                update={"drill_every": timedelta(days=180)}
            ),
        }
    )
    with TestClient(create_app(settings, store=store, run_reaper=False)) as client:
        yield client


def as_(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def old_drill(store: Store, subject: str, days: int) -> None:
    then = datetime.now(UTC) - timedelta(days=days)
    store.open_lease(
        now=then, subject=subject, email=f"{subject}@example.com", target="demo",
        role="readwrite", engine="postgres", db_user=f"dba_{subject}_{days}", rule=None,
        reason="practice", ticket=None, expires_at=then + timedelta(hours=1),
        source="127.0.0.1", kind="breakglass", incident="INC-1", drill=True,
    )  # fmt: skip


def test_an_overdue_drill_is_announced_once_and_shown(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    old_drill(store, "carol", days=200)
    glass = api.get("/v1/breakglass", headers=as_(tokens, "carol")).json()
    assert glass["drill_overdue"] is True
    assert glass["drill_every_seconds"] == 180 * 86400
    assert glass["last_drill"] is not None

    service = api.app.state.service  # type: ignore[attr-defined]
    mark = len(stack.webhooks.events)
    assert service.breakglass.announce_overdue_drill() is True
    assert service.breakglass.announce_overdue_drill() is False  # not again today
    event = stack.webhooks.wait_for(
        lambda e: e["event"] == "breakglass.drill_overdue" and e in stack.webhooks.events[mark:]
    )
    assert "break-glass drill overdue: one is due every 180d" in event["text"]
    assert [r.event for r in store.audit_records(limit=5)].count("breakglass.drill_overdue") == 1

    # a drill now: no longer overdue, nothing more announced
    drill = api.post(
        "/v1/breakglass",
        headers=as_(tokens, "carol"),
        json={"target": "demo", "incident": "INC-42", "reason": "practice", "drill": True},
    )
    assert drill.status_code == 201, drill.text
    try:
        assert (
            api.get("/v1/breakglass", headers=as_(tokens, "carol")).json()["drill_overdue"] is False
        )
        people = {
            p["subject"]: p for p in api.get("/v1/drills", headers=as_(tokens, "dave")).json()
        }
        assert people["carol"]["overdue"] is False and people["carol"]["breakglass_sessions"] == 2
    finally:
        api.delete(f"/v1/sessions/{drill.json()['id']}", headers=as_(tokens, "carol"))


def test_drills_per_person_for_reviewers_only(
    api: TestClient, tokens: dict[str, str], store: Store
) -> None:
    old_drill(store, "carol", days=10)
    old_drill(store, "zoe", days=400)
    people = {p["subject"]: p for p in api.get("/v1/drills", headers=as_(tokens, "dave")).json()}
    assert people["carol"]["overdue"] is False
    assert people["zoe"]["overdue"] is True and people["zoe"]["email"] == "zoe@example.com"
    denied = api.get("/v1/drills", headers=as_(tokens, "alice"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "denied"
