"""A pseudo-terminal as a person at a keyboard has one, for the tests of interactive flows."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import termios
import time

# The colours and cursor moves of rich, psql and prompt_toolkit: not what a person reads.
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[=>])")


def own_terminal() -> None:
    """``preexec_fn``: a session of its own whose controlling terminal is the pty (stdin),
    as in a login shell, so the terminal's Ctrl-C reaches the foreground process group;
    SIGINT as a shell leaves it (an in-process test may have left it ignored, and an ignored
    SIGINT is inherited)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(
    fd: int, pattern: str, timeout: float = 30, *, must: bool = True, raw: bool = False
) -> str:
    """What the terminal showed (without escape sequences, unless ``raw``) up to the first
    match of ``pattern``; with ``must``, no match within ``timeout`` fails the test, else
    whatever arrived is returned (the other side closing ends the wait too)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        seen += chunk
        text = _shown(seen, raw)
        if re.search(pattern, text):
            return text
    text = _shown(seen, raw)
    if must:
        raise AssertionError(f"never saw {pattern!r}; got:\n{text}")
    return text


def _shown(seen: bytes, raw: bool) -> str:
    text = seen.decode(errors="replace")
    return text if raw else ANSI.sub("", text)
