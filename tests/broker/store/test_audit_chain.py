"""The audit chain: intact trails verify; edits, deletions and reorderings are caught."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from dbaccess.broker.cli import app
from dbaccess.broker.store import Store, audit
from dbaccess.broker.store.audit_chain import raw_records, verify

CONFIG = """
[broker]
store = "sqlite:///audit.db"
[identity]
issuer = "https://login.example.com/realms/acme"
client_id = "dbaccess-cli"
[targets.demo]
engine = "postgres"
host = "db"
port = 5432
database = "demo"
provisioner = { user = "p", password_env = "P" }
roles.readonly = { group_role = "ro" }
"""


@pytest.fixture
def trail(tmp_path: Path) -> tuple[Path, Store]:
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    store = Store(f"sqlite:///{tmp_path / 'audit.db'}")
    now = datetime.now(UTC)
    for i in range(4):
        lease = store.open_lease(
            now=now,
            subject=f"user{i}",
            email=None,
            target="demo",
            role="readonly",
            engine="postgres",
            db_user=f"dba_u_{i}",
            rule="r",
            reason="why",
            ticket=None,
            expires_at=now + timedelta(hours=1),
            source="127.0.0.1",
        )
        store.activate(lease, now)
    return config, store


def tamper(store: Store, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement))


def test_intact_trail_verifies(trail: tuple[Path, Store]) -> None:
    config, store = trail
    assert verify(raw_records(store)).records == 8 and verify(raw_records(store)).ok
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert result.exit_code == 0 and "audit trail intact: 8 record(s)" in result.output


@pytest.mark.parametrize(
    ("statement", "first_bad", "problem"),
    [
        ("UPDATE audit SET detail = replace(detail, 'why', 'fun') WHERE seq = 3", 3, "edited"),
        ("UPDATE audit SET subject = 'someone-else' WHERE seq = 5", 5, "edited"),
        ("DELETE FROM audit WHERE seq = 4", 5, "deleted"),
        ("UPDATE audit SET seq = seq + 100 WHERE seq = 2", 3, "reordered"),
    ],
)
def test_tampering_is_caught(
    trail: tuple[Path, Store], statement: str, first_bad: int, problem: str
) -> None:
    config, store = trail
    tamper(store, statement)
    verdict = verify(raw_records(store))
    assert verdict.first_bad == first_bad and problem in (verdict.problem or "")
    result = CliRunner().invoke(app, ["audit", "verify", "--config", str(config)])
    assert result.exit_code == 1
    assert f"audit trail BROKEN at record #{first_bad}" in result.output


def test_export_is_json_lines(trail: tuple[Path, Store]) -> None:
    config, store = trail
    result = CliRunner().invoke(app, ["audit", "export", "--config", str(config)])
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 9))
    assert lines[0]["event"] == "session.requested"
    assert lines[0]["detail"]["reason"] == "why"
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    later = CliRunner().invoke(
        app, ["audit", "export", "--config", str(config), "--since", "2999-01-01"]
    )
    assert later.exit_code == 0 and later.output == ""
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar() == 8
