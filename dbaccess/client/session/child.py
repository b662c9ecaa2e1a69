"""Run a native client as our child, forwarding signals, and report how it ended.

The CLI stays the parent (no execve) so it can clean up. While the child owns the
terminal, SIGINT is ignored here (the terminal sends it to the child too). SIGTERM and
SIGHUP are passed on to the child; the caller's ``finally`` then wipes and revokes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType

from dbaccess.errors import LaunchError

KILL_AFTER = 5.0  # seconds a client may take to exit after a forwarded signal
CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived while no child was running; unwinds through ``finally``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception, so ``finally`` blocks run (revoke, wipe).
    Only the first stop signal raises, Ctrl-C included: a second one (``kill`` twice,
    SIGHUP then SIGTERM, Ctrl-C then SIGTERM) arriving while the first unwinds would
    otherwise raise again inside the ``finally``, before ``ignore_cleanup_signals`` is
    reached, and skip the revocation."""
    fired = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return  # the first is unwinding already, towards the clean-up
        fired = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    # SIGINT too: ignore_cleanup_signals() may have set it aside, and a process that runs
    # the CLI in-process (tests, the sandbox) must get its Ctrl-C back.
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    if previous[signal.SIGINT] is signal.default_int_handler:  # Ctrl-C as Python's own
        signal.signal(signal.SIGINT, handler)
    previous.update({sig: signal.signal(sig, handler) for sig in CLEANUP_SIGNALS})
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, old)


def ignore_cleanup_signals() -> None:
    """Inside ``cleanup_on_signals``: from now on SIGTERM/SIGHUP — and Ctrl-C, which CI
    runners send before SIGTERM when they cancel a job — wait for clean-up to end."""
    for sig in (*CLEANUP_SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def child_environment(extra: Mapping[str, str], session_id: str) -> dict[str, str]:
    # Variables a client would otherwise pick up from the user's shell and mix into our
    # session: every engine's (each client module's SCRUBBED_PREFIXES). Imported here, not
    # above: every dbaccess command imports this module for Terminated.
    from dbaccess.client.dbclients.registry import CLIENTS

    scrubbed = tuple(p for clients in CLIENTS.values() for p in clients.SCRUBBED_PREFIXES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(scrubbed)}
    env.update(extra)
    env["DBACCESS_SESSION"] = session_id
    return env


def run_child(argv: list[str], env: Mapping[str, str]) -> int:
    """Run ``argv`` to completion and return its exit code (128+N if killed by signal N)."""
    try:
        child = subprocess.Popen(argv, env=dict(env))
    except OSError as exc:
        raise LaunchError(
            f"cannot start {argv[0]}: {exc.strerror}", hint="install it, or name another client"
        ) from None
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous = {sig: signal.signal(sig, forward) for sig in CLEANUP_SIGNALS}
    try:
        code = _wait(child, received)
    finally:
        signal.signal(signal.SIGINT, old_int)
        for sig, old in previous.items():
            signal.signal(sig, old)
    if received:
        # the clean-up follows (the caller's finally): a further signal must wait for it,
        # not raise again from the handlers just put back
        ignore_cleanup_signals()
        raise Terminated(received[0])
    return 128 - code if code < 0 else code


def _wait(child: subprocess.Popen[bytes], received: list[int]) -> int:
    """Wait for the child; if it outlives a forwarded signal by ``KILL_AFTER``, kill it."""
    signalled_at: float | None = None
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if received and signalled_at is None:
                signalled_at = time.monotonic()
            if signalled_at is not None and time.monotonic() - signalled_at > KILL_AFTER:
                child.kill()
