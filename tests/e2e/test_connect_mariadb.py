"""The main job on MariaDB: the real mariadb client, a JIT account, revocation that kills."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration


def test_connect_runs_mariadb_as_an_ephemeral_account_then_drops_it(cli: Cli) -> None:
    result = cli.run(
        "connect",
        "shop",
        "--role",
        "readonly",
        "--",
        "-N",
        "-e",
        "select current_user(), current_role(), count(*) from shop.orders",
    )
    assert result.returncode == 0, result.stderr
    user, role, count = result.stdout.strip().split("\t")
    assert re.fullmatch(r"dba_alice_[0-9a-f]{10}@%", user)
    assert role == "dbaccess_readonly"  # the default role is set, no SET ROLE needed
    assert int(count) >= 2
    assert not cli.mariadb_account_exists(user.split("@")[0])
    assert sorted(p.name for p in cli.runtime_dir.iterdir()) == []


def test_readonly_account_cannot_write(cli: Cli) -> None:
    result = cli.run(
        "connect",
        "shop",
        "--role",
        "readonly",
        "--",
        "-e",
        "insert into shop.orders (customer, total) values ('mallory', 1)",
    )
    assert result.returncode == 1
    assert "INSERT command denied" in result.stderr


def test_expiry_kills_a_connected_client(cli: Cli) -> None:
    started = cli.popen(
        "connect",
        "shop",
        "--role",
        "readonly",
        "--duration",
        "3s",
        "--",
        "-N",
        "-e",
        "select current_user(); select sleep(60)",
    )
    assert started.stdout is not None
    user = started.stdout.readline().strip().split("@")[0]
    assert user.startswith("dba_alice_")
    store = cli.store()
    lease = next(s for s in store.sessions_of("alice", live_only=False) if s.db_user == user)
    store.close()
    _, err = started.communicate(timeout=30)
    lag = (datetime.now(UTC) - lease.expires_at).total_seconds()
    assert started.returncode != 0, err
    assert lag < 5, f"the client ended {lag:.1f}s after expiry"
    assert not cli.mariadb_account_exists(user)
