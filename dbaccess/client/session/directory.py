"""One private directory per live session, under the user's runtime directory.

The directory is 0700 and its credential files 0600, created with O_EXCL|O_NOFOLLOW so
nothing can be planted in their place. ``owner.json`` (no secrets) names the session and
the process that owns it, so a later run can sweep directories whose owner died.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dbaccess.client.config import runtime_dir

PREFIX = "session-"


class SessionDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, session_id: str, *, broker: str, profile: str) -> SessionDir:
        path = runtime_dir() / f"{PREFIX}{session_id}"
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
        directory = cls(path)
        directory.write_file(
            "owner.json",
            json.dumps(
                {
                    "pid": os.getpid(),
                    "started": start_time(os.getpid()),
                    "session": session_id,
                    "broker": broker,
                    "profile": profile,
                }
            ),
        )
        return directory

    def write_file(self, name: str, content: str) -> Path:
        """Write a 0600 file that did not exist before."""
        target = self.path / name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        return target

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux's /proc/PID/stat field 22);
    None where there is no /proc. A pid is reused once its process is gone: the pid and
    its start time together name one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # the command name (field 2) may hold spaces and parentheses: count from the last ')'
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, started: object) -> bool:
    """The process that wrote owner.json still runs: its pid is there and, where known,
    started when it did (not a later process that was given the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not isinstance(started, int) or start_time(pid) in (started, None)


def stale_sessions() -> list[tuple[SessionDir, dict[str, object]]]:
    """Session directories whose owning process is gone (it was SIGKILLed or crashed),
    even when another process now has its pid."""
    stale = []
    for path in sorted(runtime_dir().glob(f"{PREFIX}*")):
        try:
            owner = json.loads((path / "owner.json").read_text())
            pid = int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid = {}, -1
        if pid == -1 or not _alive(pid, owner.get("started")):
            stale.append((SessionDir(path), owner))
    return stale
