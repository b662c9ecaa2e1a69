"""Text that people write and other people's terminals show: reasons, tickets, incident
ids, notes, target and role names. Standard library only (both CLIs and the broker).

A reason travels from a requester to an approver's terminal, a chat channel and the audit
trail. Control characters in it could clear the approver's screen or rewrite what it
shows (ESC sequences), break a row into two (newlines), and bidirectional overrides can
make "approve" text read differently from what it is (CVE-2021-42574, "Trojan Source").
So the broker refuses such characters where text comes in, and the CLI escapes whatever
it shows, records written before this rule included.
"""

from __future__ import annotations

import re
import unicodedata

# Controls (Cc); line and paragraph separators (Zl, Zp), which split a row or a chat line
# as a newline does; and format characters (Cf): the direction overrides and isolates, and
# the invisible ones (U+200B, U+2060, U+FEFF...) that make "prod" and "prod\u200b" look
# alike. Zero-width (non-)joiners stay: Persian, Indic scripts and emoji need them.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")


def _unsafe(char: str) -> bool:
    return char not in _JOINERS and unicodedata.category(char) in _UNSAFE_CATEGORIES


def first_unsafe(text: str) -> str | None:
    """The first control, separator or invisible format character of ``text``, if any."""
    return next((char for char in text if _unsafe(char)), None)


def refuse_unsafe(text: str) -> str:
    """``text`` itself, or ValueError naming the first character that may not be in it
    (a pydantic validator: the broker answers 422, the CLI a usage error)."""
    found = first_unsafe(text)
    if found is not None:
        raise ValueError(
            "must not contain control or invisible formatting characters "
            f"(found U+{ord(found):04X})"
        )
    return text


def printable(text: str) -> str:
    """``text`` with each control or bidirectional-override character written as its
    escape (``\\x1b``, ``\\n``, ``\\u202e``), to show it without obeying it."""
    if first_unsafe(text) is None:
        return text
    return "".join(
        char.encode("unicode_escape").decode() if _unsafe(char) else char for char in text
    )


_LINE_BREAKS = re.compile(r"[ \t\r\n]+")


def one_line(text: str, width: int) -> str:
    """``text`` as one line of at most ``width`` characters, for a table cell (SQL a client
    sent, say): runs of spaces, tabs and line breaks as one space, every other control or
    override character escaped as ``printable`` writes it (an escape is never cut in half),
    and "…" at the end when shortened."""
    units = [
        char.encode("unicode_escape").decode() if _unsafe(char) else char
        for char in _LINE_BREAKS.sub(" ", text).strip()
    ]
    if sum(len(unit) for unit in units) <= width:
        return "".join(units)
    kept: list[str] = []
    used = 0
    for unit in units:
        if used + len(unit) > width - 1:
            break
        kept.append(unit)
        used += len(unit)
    return "".join(kept) + "…"
