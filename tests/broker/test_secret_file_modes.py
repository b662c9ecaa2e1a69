"""check-config warns of secret files others can read: a world-readable cookie key forges
any web session, a provisioner password file mints database users."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dbaccess.broker.checks import open_secret_files
from dbaccess.broker.settings import load_settings
from tests.broker.test_settings import GOOD, write

WEB = (
    '\n[web]\npublic_url = "https://dbaccess.example.com"\nclient_id = "web"\n'
    'cookie_key_file = "web.key"\n'
)


def test_secret_files_others_can_read_are_named_with_the_fix(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD + WEB)
    (tmp_path / "demo.pw").write_text("secret\n")
    (tmp_path / "web.key").write_text("key\n")
    os.chmod(tmp_path / "demo.pw", 0o644)
    os.chmod(tmp_path / "web.key", 0o640)
    warnings = open_secret_files(load_settings(config))
    assert len(warnings) == 2
    assert any("targets.demo.provisioner.password_file" in w and "0644" in w for w in warnings)
    assert any("web.cookie_key_file" in w and "chmod 600" in w for w in warnings)
    for name in ("demo.pw", "web.key"):
        os.chmod(tmp_path / name, 0o600)
    assert open_secret_files(load_settings(config)) == []
    # and check-config says it (offline: no target is asked)
    os.chmod(tmp_path / "web.key", 0o644)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dbaccess.broker",
            "check-config",
            "--offline",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "web.cookie_key_file" in run.stderr and "readable by others" in run.stderr


def test_a_metrics_token_others_can_read_is_named(tmp_path: Path) -> None:
    assert "[broker]\n" in GOOD
    config = write(
        tmp_path, GOOD.replace("[broker]\n", '[broker]\nmetrics_token_file = "m.tok"\n', 1)
    )
    (tmp_path / "demo.pw").write_text("secret\n")
    os.chmod(tmp_path / "demo.pw", 0o600)
    (tmp_path / "m.tok").write_text("token\n")
    os.chmod(tmp_path / "m.tok", 0o644)
    (warning,) = open_secret_files(load_settings(config))
    assert "broker.metrics_token_file" in warning and "chmod 600" in warning
