"""One person cannot starve a target (issue 12, point 6): caps on live sessions and on
their connections, per person and per target, through the broker in-process with real
tokens and the real PostgreSQL and MariaDB targets. Over a cap: a 429 naming the cap and
its setting, an audited denial, and nothing created on the database. Break-glass has a
budget of its own, so a full target does not block an incident."""

from __future__ import annotations

import json
import re
import signal
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from dbaccess.broker.api.app import create_app
from dbaccess.broker.capacity import capacity_warnings
from dbaccess.broker.settings import LimitsSection, Settings, TargetLimits, load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.processes import end_process, free_port, wait_until
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration

LIMITS = LimitsSection(
    sessions_per_person=2,
    connections_per_person=100,
    sessions_per_target=3,
    connections_per_target=100,
    breakglass_sessions_per_person=1,
    breakglass_connections_per_target=20,
)


def _settings(stack: Stack, db: Path) -> Settings:
    settings = load_settings(stack.broker_config)
    shop = settings.targets["shop"].model_copy(
        update={"limits": TargetLimits(sessions_per_person=10, connections_per_person=10)}
    )  # readonly: 5 connections
    return settings.model_copy(
        update={
            "broker": settings.broker.model_copy(update={"store": f"sqlite:///{db}"}),
            "limits": LIMITS,
            "targets": {**settings.targets, "shop": shop},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'caps.db'}")


@pytest.fixture
def api(
    stack: Stack, tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    app = create_app(_settings(stack, tmp_path / "caps.db"), store=store, run_reaper=False)
    with TestClient(app) as client:
        yield client


def as_(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


def ask(
    api: TestClient,
    tokens: dict[str, str],
    who: str,
    target: str = "demo",
    role: str = "readonly",
    **more: Any,
) -> Any:
    return api.post(
        "/v1/sessions", headers=as_(tokens, who), json={"target": target, "role": role, **more}
    )


def test_caps_per_person_and_per_target_refuse_with_429_and_create_nothing(
    api: TestClient, tokens: dict[str, str], stack: Stack, store: Store
) -> None:
    made = [ask(api, tokens, "alice").json() for _ in range(2)]
    assert all("password" in m for m in made)
    before = set(stack.managed_users())

    third = ask(api, tokens, "alice")
    assert third.status_code == 429, third.text
    assert third.json()["error"] == {
        "code": "cap_reached",
        "message": "one person may hold at most 2 live sessions on 'demo' "
        "(limits.sessions_per_person); this session would make 3",
        "hint": "end one first: dbaccess sessions lists yours, dbaccess revoke ID ends one",
    }
    assert set(stack.managed_users()) == before  # nothing made on the database
    assert len(store.sessions_of("alice")) == 2  # nor a lease
    denied = [r.detail for r in store.audit_records(event="session.denied")]
    assert [(d["cap"], d["target"]) for d in denied] == [("limits.sessions_per_person", "demo")]

    # bob's one session fills the target (3); erin, with none of her own, is refused
    bobs = ask(api, tokens, "bob")
    assert bobs.status_code == 201
    erins = ask(api, tokens, "erin")
    assert erins.status_code == 429
    message = erins.json()["error"]["message"]
    assert message == (
        "'demo' has no sessions to spare: at most 3 for all live sessions "
        "(limits.sessions_per_target); this session would make 4"
    )
    assert "limits.sessions_per_target" in erins.json()["error"]["hint"]
    assert "dbaccess breakglass" in erins.json()["error"]["hint"]

    # a target's own limits: on shop, 10 connections per person = two readonly sessions
    shop = [ask(api, tokens, "alice", "shop").json() for _ in range(2)]
    assert all("password" in s for s in shop)
    over = ask(api, tokens, "alice", "shop")
    assert over.status_code == 429
    assert over.json()["error"]["message"] == (
        "one person may hold at most 10 live connections on 'shop' "
        "(targets.shop.limits.connections_per_person); this session would make 15"
    )

    # an ended session frees its place at once
    gone = api.delete(f"/v1/sessions/{made[0]['id']}", headers=as_(tokens, "alice"))
    assert gone.json()["state"] == "revoked"
    assert ask(api, tokens, "erin").status_code == 201


def test_breakglass_has_its_own_budget(
    api: TestClient, tokens: dict[str, str], stack: Stack
) -> None:
    for who in ("alice", "alice", "bob"):
        assert ask(api, tokens, who).status_code == 201  # demo's everyday budget is full
    assert ask(api, tokens, "erin").status_code == 429
    carol = as_(tokens, "carol")
    body = {"target": "demo", "incident": "INC-42", "reason": "orders stuck"}
    glass = api.post("/v1/breakglass", headers=carol, json=body)
    assert glass.status_code == 201, glass.text  # the incident is not blocked
    before = set(stack.managed_users())
    again = api.post("/v1/breakglass", headers=carol, json=body)
    assert again.status_code == 429
    assert again.json()["error"]["message"] == (
        "one person may hold at most 1 live break-glass sessions on 'demo' "
        "(limits.breakglass_sessions_per_person); this session would make 2"
    )
    assert set(stack.managed_users()) == before


def test_an_approved_request_refused_at_the_cap_stays_approved(
    api: TestClient, tokens: dict[str, str], store: Store
) -> None:
    held = [ask(api, tokens, "alice").json() for _ in range(2)]
    want = {"target": "demo", "role": "readwrite", "reason": "fix order 7"}
    request = ask(api, tokens, "alice", **want).json()
    for lead in ("erin", "frank"):
        api.post(f"/v1/requests/{request['id']}/approve", headers=as_(tokens, lead))
    refused = ask(api, tokens, "alice", **want, request_id=request["id"])
    assert refused.status_code == 429
    assert store.get_request(request["id"]).state == "approved"  # type: ignore[union-attr]
    api.delete(f"/v1/sessions/{held[0]['id']}", headers=as_(tokens, "alice"))
    granted = ask(api, tokens, "alice", **want, request_id=request["id"])
    assert granted.status_code == 201, granted.text


def test_concurrent_requests_cannot_pass_a_cap_together(
    api: TestClient, tokens: dict[str, str], store: Store
) -> None:
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: ask(api, tokens, "alice"), range(6)))
    assert sorted(a.status_code for a in answers) == [201, 201, 429, 429, 429, 429]
    assert len(store.sessions_of("alice")) == 2


def test_check_config_compares_the_budget_with_max_connections(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    assert capacity_warnings(settings) == []  # 160 + 20 + the broker's 10 < 197
    crowded = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"connections_per_target": 180})}
    )
    [mariadb, postgres] = capacity_warnings(crowded)  # by engine, host, port
    assert postgres.startswith("targets 'demo' on postgres 127.0.0.1:")
    assert "may open 200 connections" in postgres and "210 in all" in postgres
    assert "the server allows 197 (max_connections 200, 3 reserved)" in postgres
    assert "targets 'shop' on mariadb" in mariadb and "allows 200" in mariadb

    # and check-config says so (a warning: the file is valid, the servers answer)
    from typer.testing import CliRunner

    from dbaccess.broker.cli import app as broker_cli

    text = stack.broker_config.read_text()
    assert "connections_per_target = 160" in text
    config = tmp_path / "crowded.toml"
    config.write_text(text.replace("connections_per_target = 160", "connections_per_target = 180"))
    result = CliRunner().invoke(broker_cli, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("on postgres 127.0.0.1:" in w and "210 in all" in w for w in warnings)
    assert "ok (2 target(s), each bootstrapped" in result.stdout


def test_serve_logs_a_budget_that_does_not_fit_and_starts_all_the_same(
    stack: Stack, tmp_path: Path
) -> None:
    """``dbaccess-broker serve`` compares each server's budget with its max_connections at
    start-up (and after a reload), as check-config does, and says so in its log; a server
    that is down is a warning too, and the broker serves anyway."""
    # A broker of its own (own store), on the suite's PostgreSQL but in a database with no
    # bootstrap: its start-up reconciliation finds no dbaccess.managed_users there, so it
    # cannot revoke the suite's users. Its MariaDB target is a port where nothing listens.
    with stack.postgres.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS caps_probe WITH (FORCE)")
        admin.execute("CREATE DATABASE caps_probe")
    text = stack.broker_config.read_text()
    for old, new in [
        (f"port = {stack.mariadb.port}\n", f"port = {free_port()}\n"),
        ('database = "demo"', 'database = "caps_probe"'),
        ("connections_per_target = 160", "connections_per_target = 180"),
    ]:
        assert old in text
        text = text.replace(old, new)
    text = re.sub(r"(?m)^store = .*$", f'store = "sqlite:///{tmp_path / "probe.db"}"', text)
    config, log, port = tmp_path / "probe.toml", tmp_path / "probe.log", free_port()
    config.write_text(text)
    broker = stack.spawn_broker(port, log, config=config)

    def caps_warnings() -> list[str]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [
            line["msg"]
            for line in lines
            if line["level"] == "warning" and line["msg"].startswith("connection caps: ")
        ]

    def healthy() -> bool:
        assert broker.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=30, what="the probe broker")  # it starts all the same
        wait_until(lambda: len(caps_warnings()) == 2, timeout=30, what="the caps warnings")
        [mariadb, postgres] = caps_warnings()
        assert "could not read max_connections of mariadb 127.0.0.1:" in mariadb
        assert "targets 'demo' on postgres 127.0.0.1:" in postgres
        assert "210 in all" in postgres
        assert "the server allows 197 (max_connections 200, 3 reserved)" in postgres
        # a reload that changes the caps checks them again
        config.write_text(
            text.replace("connections_per_target = 180", "connections_per_target = 190")
        )
        broker.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any("220 in all" in w for w in caps_warnings()),
            timeout=30,
            what="the caps warning after the reload",
        )
    finally:
        end_process(broker)
        with stack.postgres.connect() as admin:
            admin.execute("DROP DATABASE IF EXISTS caps_probe WITH (FORCE)")
    # The suite's own broker (caps within its servers) logged no such warning.
    assert "connection caps: " not in stack.broker_log.read_text()


def test_a_role_that_no_cap_admits_is_a_config_error(stack: Stack) -> None:
    raw = tomllib.loads(stack.broker_config.read_text())
    raw["limits"] = {"connections_per_person": 4}  # the roles' connection_limit is 5
    with pytest.raises(
        ValidationError,
        match=r"targets\.demo\.roles\.readonly\."
        r"connection_limit: 5 is more than limits\.connections_per_person",
    ):
        Settings.model_validate(raw)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'count.db'}"
    else:
        import uuid

        pg = request.getfixturevalue("stack").postgres
        database = f"caps_{uuid.uuid4().hex[:8]}"
        with pg.connect() as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        url = (
            f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:"
            f"{pg.port}/{database}"
        )
    opened = Store(url)
    yield opened
    opened.close()


def test_the_count_weighs_each_live_lease_by_its_role_on_both_stores(any_store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    from dbaccess.broker.store import CapReached, Caps

    now = datetime.now(UTC)
    n = iter(range(100))

    def lease(subject: str, role: str, caps: Caps | None = None, kind: str = "session") -> Any:
        return any_store.open_lease(
            now=now,
            subject=subject,
            email=None,
            target="demo",
            role=role,
            engine="postgres",
            db_user=f"dba_{subject}_{next(n)}",
            rule="r",
            reason=None,
            ticket=None,
            expires_at=now + timedelta(hours=1),
            source=None,
            kind=kind,
            incident="INC-1" if kind == "breakglass" else None,
            caps=caps,
        )

    weights = {"readonly": 2, "readwrite": 10}
    lease("alice", "readonly")
    lease("alice", "readwrite")
    lease("bob", "readonly")
    gone = lease("bob", "readwrite")
    any_store.begin_revoke(gone.id, now, "user")  # still live: its user exists until dropped
    lease("carol", "readwrite", kind="breakglass")  # another budget
    revoked = lease("erin", "readwrite")
    any_store.claim_for_revocation([(revoked.id, "user")], now, "me", timedelta(seconds=15))
    any_store.settle_revocations([(any_store.get(revoked.id), None, None)], now, "me")
    # alice: 2 sessions, 12 connections; everyone: 4 sessions, 24 connections (erin's is gone)
    with pytest.raises(CapReached) as person:
        lease("alice", "readonly", Caps(False, weights, person_connections=13))
    assert (person.value.cap, person.value.would_be, person.value.limit) == (
        "person_connections",
        14,
        13,
    )
    with pytest.raises(CapReached) as target:
        lease("dave", "readwrite", Caps(False, weights, target_connections=33))
    assert (target.value.cap, target.value.would_be) == ("target_connections", 34)
    lease(
        "dave",
        "readwrite",
        Caps(False, weights, person_sessions=1, target_sessions=5, target_connections=34),
    )  # exactly at the caps: granted
    lease(
        "carol",
        "readwrite",
        Caps(True, weights, person_sessions=2, target_connections=20),
        kind="breakglass",
    )
