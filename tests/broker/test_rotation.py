"""``dbaccess-broker rotate-credential``: the provisioner's password changes, on both
engines, and the broker keeps working with the new one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pymysql
import pytest

from dbaccess.broker.engines import NewUser, engine_for
from dbaccess.broker.reaper import Reaper
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.services.sessions import SessionService
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.stack import PROVISIONER, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("rotation")) as stack:
        yield stack


def broker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", *args],
        text=True,
        capture_output=True,
        timeout=60,
        env=dict(os.environ),
    )


def test_rotation_on_both_engines(rotating: Stack, tmp_path: Path) -> None:
    old = rotating.provisioner_password
    text = rotating.broker_config.read_text()
    env_ref = 'password_env = "DBACCESS_SANDBOX_PROVISIONER_PASSWORD"'
    text = text.replace(env_ref, 'password_file = "demo.pw"', 1)
    text = text.replace(env_ref, 'password_file = "shop.pw"', 1)
    config = tmp_path / "broker.toml"
    config.write_text(text)
    for name in ("demo", "shop"):
        (tmp_path / f"{name}.pw").write_text(old + "\n")
        os.chmod(tmp_path / f"{name}.pw", 0o600)

    for name in ("demo", "shop"):
        result = broker("rotate-credential", name, "--config", str(config))
        assert result.returncode == 0, result.stderr
        secret = tmp_path / f"{name}.pw"
        new = secret.read_text().strip()
        assert new != old and len(new) >= 32
        assert new not in result.stdout + result.stderr
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
        assert not (tmp_path / f"{name}.pw.new").exists()

    with pytest.raises(psycopg.OperationalError):
        rotating.postgres.connect("demo", user=PROVISIONER, password=old)
    with pytest.raises(pymysql.err.OperationalError):
        rotating.mariadb.connect(user=PROVISIONER, password=old)

    # the broker's engines read the new passwords from the files and keep working
    settings = load_settings(config)
    for name, target in settings.targets.items():
        engine = engine_for(name, target)
        username = f"dba_rotation_{name}"
        engine.create_user(
            NewUser(
                username,
                "session-pw-1234567890",
                target.roles["readonly"],
                datetime.now(UTC) + timedelta(minutes=5),
            )
        )
        assert username in engine.list_managed_users()
        engine.revoke_user(username)
        assert username not in engine.list_managed_users()
        engine.close()

    # on a schedule: the reaper rotates every target whose password file is older than
    # rotate_every
    scheduled = (
        config.read_text()
        .replace('database = "demo"', 'database = "demo"\nrotate_every = "1h"')
        .replace('database = "shop"', 'database = "shop"\nrotate_every = "1h"')
    )
    config.write_text(scheduled)
    before = {name: (tmp_path / f"{name}.pw").read_text() for name in ("demo", "shop")}
    hours_ago = time.time() - 7200
    os.utime(tmp_path / "demo.pw", (hours_ago, hours_ago))  # demo is due, shop is not
    settings = load_settings(config)
    engines = {name: engine_for(name, t) for name, t in settings.targets.items()}
    service = SessionService(BrokerContext.build(settings, Store("sqlite://"), engines))
    Reaper(service, 1, 1)._rotate_due_credentials()
    assert (tmp_path / "demo.pw").read_text() != before["demo"]
    assert (tmp_path / "shop.pw").read_text() == before["shop"]
    rotating.postgres.connect(
        "demo", user=PROVISIONER, password=(tmp_path / "demo.pw").read_text().strip()
    ).close()


def test_rotation_needs_a_password_file(rotating: Stack) -> None:
    result = broker("rotate-credential", "demo", "--config", str(rotating.broker_config))
    assert result.returncode == 3
    assert "rotation needs password_file" in result.stderr
