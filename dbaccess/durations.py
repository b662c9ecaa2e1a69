"""Durations as people type them: ``90s``, ``15m``, ``1h``, ``1h30m``, ``2d``."""

from __future__ import annotations

import re
from datetime import timedelta

from dbaccess.errors import UsageError

_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The longest duration dbaccess takes anywhere (CLI options, broker settings, API bodies):
# a year. Every lifetime and rule is far shorter; the bound turns absurd numbers into a
# clear error instead of a date overflow (a traceback in the CLI, a 500 in the broker).
MAX_SECONDS = 366 * 86400


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` into a positive timedelta; raise ValueError with a readable message."""
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        cleaned += "s"
    parts = _PART.findall(cleaned)
    if not cleaned or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(f"'{text}' is not a duration; use e.g. 90s, 15m, 1h or 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"'{text}' must be longer than zero")
    if seconds > MAX_SECONDS:
        raise ValueError(
            f"'{text}' is longer than {MAX_SECONDS // 86400}d, the longest duration dbaccess takes"
        )
    return timedelta(seconds=seconds)


def parse_duration_option(text: str | None, option: str = "--duration") -> timedelta | None:
    """A ``--duration`` value as typed (None: not given), or the usage error naming it: for
    every command of both programs (``dbaccess``, ``dbaccess-broker``)."""
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def format_duration(delta: timedelta) -> str:
    """The shortest form that ``parse_duration`` reads back: ``1h30m``, ``45s``."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)
