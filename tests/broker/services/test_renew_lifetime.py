"""A session user lives at most the target's max_lifetime from its creation, however often
it is renewed (issue 12, point 2): through the broker's API in-process, with real tokens
and the suite's real MariaDB target. Past the bound, a renewal is a 403 naming
max_lifetime — whether the broker's clock or the database's own bound says so — and an
audited ``session.renew_denied`` naming the lease, the person and why."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.broker.store.audit_chain import raw_records, verify
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
    db = tmp_path / "api.db"
    # A bound below the rule's 1h; the database's own (from the bootstrap) stays 24h.
    shop = settings.targets["shop"].model_copy(update={"max_lifetime": timedelta(minutes=50)})
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"}),
            "targets": {**settings.targets, "shop": shop},
        }
    )
    with TestClient(create_app(settings, store=store, run_reaper=False)) as client:
        yield client


def test_renewal_past_max_lifetime_is_a_clear_403(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    session = api.post(
        "/v1/sessions",
        headers=alice,
        json={"target": "shop", "role": "readonly", "duration_seconds": 600},
    ).json()
    path = f"/v1/sessions/{session['id']}/renew"
    try:
        refused = api.post(path, headers=alice, json={"duration_seconds": 55 * 60})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "max_lifetime"
        assert "max_lifetime" in refused.json()["error"]["message"]
        assert api.post(path, headers=alice, json={"duration_seconds": 40 * 60}).status_code == 200
        # As if the database had created it 23h55m ago: its own bound (24h from
        # managed_users.created_at) refuses what the broker allows. Still a 403.
        admin = stack.mariadb.connect()
        try:
            with admin.cursor() as cur:
                cur.execute(
                    "UPDATE dbaccess.managed_users SET created_at = created_at - "
                    "INTERVAL 1435 MINUTE WHERE username = %s",
                    (session["db_user"],),
                )
        finally:
            admin.close()
        by_database = api.post(path, headers=alice, json={"duration_seconds": 45 * 60})
        assert by_database.status_code == 403, by_database.text
        assert by_database.json()["error"]["code"] == "max_lifetime"
        assert "beyond the maximum lifetime" in by_database.json()["error"]["message"]
        # Both refusals are in the audit trail, on the lease, as the person who asked.
        [granted] = store.audit_records(session["id"], event="session.granted")
        denied = store.audit_records(session["id"], event="session.renew_denied")
        assert [(r.subject, r.detail["code"], r.detail["refused_by"]) for r in denied] == [
            (granted.subject, "max_lifetime", "broker"),
            (granted.subject, "max_lifetime", "database"),
        ]
        by_db = denied[1].detail
        assert by_db["db_user"] == session["db_user"] and by_db["target"] == "shop"
        assert by_db["email"] == "alice@example.com"
        assert "beyond the maximum lifetime" in by_db["explanation"]
        assert by_db["rule"] == "dev-readonly"
        chain = verify(raw_records(store))
        assert chain.ok, chain.problem
    finally:
        api.delete(f"/v1/sessions/{session['id']}", headers=alice)
