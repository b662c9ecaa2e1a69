"""The real CLI told to use a shared directory for its session files (a home, /tmp): the
directory keeps its mode, the session's files go to a private one inside it, and nothing
is left behind."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import DBACCESS, Cli

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "full-cli"])
def test_a_shared_runtime_dir_is_not_chmod_ed(cli: Cli, tmp_path: Path, fast: bool) -> None:
    shared = tmp_path / "home"
    shared.mkdir()
    shared.chmod(0o755)
    env = {**cli.env, "DBACCESS_RUNTIME_DIR": str(shared)}
    if not fast:
        env["DBACCESS_FAST_EXEC"] = "0"
    result = subprocess.run(
        [
            *DBACCESS,
            "exec",
            "demo",
            "--role",
            "readonly",
            "--",
            "sh",
            "-c",
            'dirname "$(dirname "$PGPASSFILE")"; stat -c %a "$(dirname "$PGPASSFILE")"; '
            'psql -Atc "select 1"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    parent, session_mode, one = result.stdout.split()
    assert parent == str(shared / f"dbaccess-{os.geteuid()}")
    assert session_mode == "700" and one == "1"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert [p.name for p in shared.iterdir()] == [f"dbaccess-{os.geteuid()}"]
    assert list((shared / f"dbaccess-{os.geteuid()}").iterdir()) == []  # wiped


def test_a_runtime_dir_that_cannot_be_made_safe_is_refused_before_a_session(
    cli: Cli, tmp_path: Path
) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    env = {**cli.env, "DBACCESS_RUNTIME_DIR": str(open_dir / "runtime")}
    result = subprocess.run(
        [*DBACCESS, "connect", "demo", "--role", "readonly"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 3, result.stderr  # CONFIG
    assert "other users may rename or replace what is in" in " ".join(result.stderr.split())
    assert "hint: set DBACCESS_RUNTIME_DIR to a directory of your own" in result.stderr
    assert stat.S_IMODE(open_dir.stat().st_mode) == 0o777
