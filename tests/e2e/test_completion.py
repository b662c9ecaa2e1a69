"""Shell completion of target, role and session names, through click's completion protocol
(what the installed bash script runs at <TAB>), from what ``dbaccess targets`` and
``dbaccess sessions`` remembered — without a call to the broker."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration


def complete(env: dict[str, str], line: str) -> list[str]:
    """What bash offers for ``line`` (the word being completed is its last, maybe empty)."""
    words = line.split(" ")
    result = subprocess.run(
        [sys.executable, "-m", "dbaccess"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **env,
            "_DBACCESS_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
        },
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completes_names_the_cli_has_seen(cli: Cli, tmp_path: Path) -> None:
    env = {**cli.env, "DBACCESS_CACHE_DIR": str(tmp_path / "cache")}
    assert complete(env, "dbaccess connect ") == []  # nothing seen yet, and no error

    listed = subprocess.run(
        [sys.executable, "-m", "dbaccess", "targets"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert complete(env, "dbaccess connect ") == ["demo", "shop"]
    assert complete(env, "dbaccess connect s") == ["shop"]
    assert complete(env, "dbaccess exec demo --role ") == ["readonly", "readwrite"]
    assert complete(env, "dbaccess --json creds shop -r read") == ["readonly", "readwrite"]
    assert complete(env, "dbaccess breakglass d") == ["demo"]
    # another profile has seen nothing
    assert complete(env, "dbaccess --profile other connect ") == []

    granted = subprocess.run(
        [
            sys.executable,
            "-m",
            "dbaccess",
            "--json",
            "creds",
            "demo",
            "--role",
            "readonly",
            "--reveal",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert granted.returncode == 0, granted.stderr
    session = json.loads(granted.stdout)["data"]
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "dbaccess", "sessions"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        # no broker call at <TAB>: with the broker's address gone, the names still come
        offline = {**env, "DBACCESS_BROKER": "http://127.0.0.1:9"}
        assert complete(offline, "dbaccess revoke ") == [session["id"]]
        assert complete(offline, f"dbaccess renew {session['id'][:4]}") == [session["id"]]
        assert complete(offline, "dbaccess connect ") == ["demo", "shop"]
    finally:
        cli.run("revoke", session["id"])

    # the cache holds names, never a secret, and only its owner can read it
    (cache,) = (tmp_path / "cache").iterdir()
    assert cache.name == "names-default.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    text = cache.read_text()
    assert session["password"] not in text
    assert session["db_user"] not in text
    assert "eyJ" not in text  # no JWT
    assert set(json.loads(text)) == {"version", "targets", "engines", "sessions"}


def test_completion_survives_a_damaged_cache(tmp_path: Path) -> None:
    env = {**os.environ, "DBACCESS_CACHE_DIR": str(tmp_path)}
    (tmp_path / "names-default.json").write_text("{not json")
    assert complete(env, "dbaccess connect ") == []
    (tmp_path / "names-default.json").write_text('{"version": 1, "targets": ["x"]}')
    assert complete(env, "dbaccess connect ") == []
