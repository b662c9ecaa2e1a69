"""Small helpers shared by the sandbox's process managers."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# ``process_group=`` for every server: a group of its own, out of the terminal's foreground
# group. Ctrl-C at psql goes to that group (the sandbox, dbaccess, psql), and PostgreSQL,
# for one, takes SIGINT as "shut down now".
DAEMON_GROUP = 0


class ServiceError(RuntimeError):
    """A sandbox service could not be started or did not become ready."""


_handed_out: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, below the kernel's
    ephemeral range: a port handed out here is often bound seconds later (after the
    servers before it have started), and a port of that range can be taken in between as
    the local end of any outgoing connection, which made a server's bind fail."""
    low, high = _below_ephemeral()
    for _ in range(200) if high > low else ():
        port = secrets.choice(range(low, high + 1))
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below it
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _below_ephemeral() -> tuple[int, int]:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 49152  # IANA's dynamic range (macOS, BSD)
    return max(10000, first - 12000), first - 1


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``check`` until it returns True, or raise ServiceError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f}s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def service_user(name: str) -> str | None:
    """The account a server should run as: ``name`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError as exc:
        raise ServiceError(
            f"running as root, but there is no '{name}' account to run the server as"
        ) from exc
    return name


def hand_over(path: Path, user: str | None) -> None:
    """Give ``path`` (recursively) to ``user`` so a server running as that user can write it."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def find_binary(name: str, *candidates: str) -> str:
    """Find ``name`` on PATH or at one of ``candidates`` (globs allowed), newest first."""
    for pattern in candidates:
        matches = sorted(Path("/").glob(pattern.lstrip("/")), reverse=True)
        for match in matches:
            if os.access(match, os.X_OK):
                return str(match)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(f"'{name}' was not found; install it (see .ci/run for the packages)")


def make_traversable(path: Path) -> None:
    """Let a service account reach ``path`` through its parents (mkdtemp makes them 0700).

    Only the search bit is added: the service account can pass through, not list.
    """
    for parent in path.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def end_process(
    process: subprocess.Popen[bytes] | None, *, timeout: float = 10, sig: int = signal.SIGTERM
) -> None:
    """Ask ``process`` to stop with ``sig``; kill it if it is still there after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def spawn_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server: its stdout and stderr appended to ``log_path``, stdin closed, in a
    process group of its own (``DAEMON_GROUP``), as ``user`` (and that user's group) when one
    is given. The log is opened before and closed after: the child keeps its own copy."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            process_group=DAEMON_GROUP,
            user=user,
            group=user,
        )


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a server's log, for an error message."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_started(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_path: Path,
    stop: Callable[[], None],
) -> None:
    """Poll ``ready`` until it returns True. Should ``process`` exit first, or time run out,
    ``stop`` it (each server has its own way) and raise ServiceError with the tail of
    ``log_path``, where the reason is."""

    def check() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"{what} exited at start")
        return ready()

    try:
        wait_until(check, timeout=timeout, what=what)
    except ServiceError as exc:
        stop()
        raise ServiceError(f"{exc}; log tail:\n{log_tail(log_path)}") from None
