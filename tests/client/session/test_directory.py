"""Leftover session directories are recognised by the process that made them — its pid
and its start time — so a pid reused by another process keeps no dead session alive."""

from __future__ import annotations

import json
import subprocess

from dbaccess.client.config import runtime_dir
from dbaccess.client.session.directory import PREFIX, SessionDir, stale_sessions, start_time


def leftover(session: str, owner: dict[str, object]) -> None:
    path = runtime_dir() / f"{PREFIX}{session}"
    path.mkdir(mode=0o700)
    SessionDir(path).write_file("owner.json", json.dumps({"session": session, **owner}))


def test_a_reused_pid_does_not_keep_a_dead_sessions_files() -> None:
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            started = start_time(other.pid)
            assert isinstance(started, int)
            leftover("s-alive", {"pid": other.pid, "started": started})
            # what a crashed dbaccess left, its pid since given to this other process
            leftover("s-reused", {"pid": other.pid, "started": started - 1})
            leftover("s-old-format", {"pid": other.pid})  # written before start times
            stale = {owner["session"] for _, owner in stale_sessions()}
        finally:
            other.kill()
    assert stale == {"s-reused"}
    assert {owner["session"] for _, owner in stale_sessions()} == {
        "s-alive",
        "s-reused",
        "s-old-format",
    }  # once the process is gone, all of them


def test_a_session_directory_records_who_made_it() -> None:
    import os

    made = SessionDir.create("s-mine", broker="http://b", profile="default")
    owner = json.loads((made.path / "owner.json").read_text())
    assert owner["pid"] == os.getpid() and owner["started"] == start_time(os.getpid())
    assert stale_sessions() == []
