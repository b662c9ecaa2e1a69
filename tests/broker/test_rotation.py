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


def _with_files(rotating: Stack, tmp_path: Path) -> Path:
    """The stack's config with demo's provisioner password in demo.pw (the one in force)."""
    current = rotating.provisioner_password
    # an earlier test may have rotated it: the password in force is in the newest demo.pw
    for earlier in sorted(tmp_path.parent.glob("*/demo.pw"), key=lambda p: p.stat().st_mtime):
        current = earlier.read_text().strip()
    text = rotating.broker_config.read_text().replace(
        'password_env = "DBACCESS_SANDBOX_PROVISIONER_PASSWORD"', 'password_file = "demo.pw"', 1
    )
    config = tmp_path / "broker.toml"
    config.write_text(text)
    (tmp_path / "demo.pw").write_text(current + "\n")
    os.chmod(tmp_path / "demo.pw", 0o600)
    return config


def _logs_in(rotating: Stack, password: str) -> bool:
    try:
        rotating.postgres.connect("demo", user=PROVISIONER, password=password).close()
    except psycopg.OperationalError:
        return False
    return True


def test_a_rotation_a_crash_cut_short_is_finished_not_lost(rotating: Stack, tmp_path: Path) -> None:
    from dbaccess.broker.engines.postgres import admin

    config = _with_files(rotating, tmp_path)
    target = load_settings(config).targets["demo"]
    old = (tmp_path / "demo.pw").read_text().strip()
    # the crash: <file>.new written, the database changed, the file never replaced
    staged = "staged-by-a-broker-that-died-0123456789"
    (tmp_path / "demo.pw.new").write_text(staged + "\n")
    admin.change_own_password("demo", target, old, staged)
    assert not _logs_in(rotating, old) and _logs_in(rotating, staged)

    result = broker("rotate-credential", "demo", "--config", str(config))
    assert result.returncode == 0, result.stderr
    now = (tmp_path / "demo.pw").read_text().strip()
    assert now not in (old, staged) and _logs_in(rotating, now)
    assert not (tmp_path / "demo.pw.new").exists()


def test_a_staged_password_the_database_refuses_is_dropped(rotating: Stack, tmp_path: Path) -> None:
    config = _with_files(rotating, tmp_path)
    (tmp_path / "demo.pw.new").write_text("never-applied-anywhere-0123456789\n")
    result = broker("rotate-credential", "demo", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert _logs_in(rotating, (tmp_path / "demo.pw").read_text().strip())
    assert not (tmp_path / "demo.pw.new").exists()


def test_a_change_whose_answer_is_lost_keeps_the_new_password(
    rotating: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbaccess.broker import rotation
    from dbaccess.broker.engines.postgres import admin
    from dbaccess.errors import DatabaseError

    config = _with_files(rotating, tmp_path)
    target = load_settings(config).targets["demo"]
    real = admin.change_own_password

    def applied_then_timed_out(name: str, section: object, old: str, new: str) -> None:
        real(name, section, old, new)  # type: ignore[arg-type]
        raise DatabaseError("rotating the provisioner of 'demo' failed: timeout")

    monkeypatch.setattr(admin, "change_own_password", applied_then_timed_out)
    with pytest.raises(DatabaseError):
        rotation.rotate("demo", target)
    kept = tmp_path / "demo.pw.new"
    assert kept.exists() and _logs_in(rotating, kept.read_text().strip())
    monkeypatch.setattr(admin, "change_own_password", real)
    assert rotation.rotate("demo", target)  # settles the kept one first, then rotates
    assert _logs_in(rotating, (tmp_path / "demo.pw").read_text().strip())
    assert not kept.exists()
