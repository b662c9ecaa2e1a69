"""A watchdog that cleans up after a sandbox which could not clean up after itself.

The sandbox's own ``finally`` stops its daemons and removes its directory. A SIGKILL (or a
crash of the interpreter) skips that, and PostgreSQL, MariaDB, the identity provider, the
broker, D-Bus and the keyring daemon would keep running, some of them in sessions of their
own. So before it starts anything the sandbox marks its environment with
``DBACCESS_SANDBOX_ROOT=<its directory>`` (every process it starts inherits it, down to
psql and PostgreSQL's backends) and starts this watchdog in a session of its own, holding
the read end of a pipe whose write end only the sandbox has. When the sandbox is gone, for
whatever reason, the pipe reads end-of-file: the watchdog ends every marked process and
removes the directory. After a clean exit it finds nothing left to do.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

MARKER = "DBACCESS_SANDBOX_ROOT"
GRACE_SECONDS = 10.0


def marked_processes(root: Path) -> list[int]:
    """Pids of the processes whose environment carries ``MARKER=root`` (not our own)."""
    needle = f"{MARKER}={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone already, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(root: Path, grace: float = GRACE_SECONDS) -> None:
    """End the processes marked with ``root`` (SIGTERM, then SIGKILL) and remove it."""
    for pid in marked_processes(root):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while marked_processes(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in marked_processes(root):
        _signal(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start(root: Path) -> int:
    """Mark this process's environment with ``root`` and start the watchdog; return the
    pipe's write end, to keep open for as long as this process lives."""
    os.environ[MARKER] = str(root)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, False)  # a daemon holding it would keep the pipe open
    subprocess.Popen(
        [sys.executable, "-m", "dbaccess.sandbox.lifeline", str(root)],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of reach of the terminal's Ctrl-C and hang-up
    )
    os.close(read_end)
    return write_end


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(0, 64):  # nothing is ever written: this returns b"" when the sandbox ends
        pass
    sweep(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
