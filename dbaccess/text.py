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

import unicodedata

# Explicit directional embeddings, overrides and isolates, and the invisible marks.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(char: str) -> bool:
    return char in _BIDI or unicodedata.category(char) == "Cc"


def first_unsafe(text: str) -> str | None:
    """The first control or bidirectional-override character of ``text``, if any."""
    return next((char for char in text if _unsafe(char)), None)


def refuse_unsafe(text: str) -> str:
    """``text`` itself, or ValueError naming the first character that may not be in it
    (a pydantic validator: the broker answers 422, the CLI a usage error)."""
    found = first_unsafe(text)
    if found is not None:
        raise ValueError(
            f"must not contain control or text-direction characters (found U+{ord(found):04X})"
        )
    return text


def printable(text: str) -> str:
    """``text`` with each control or bidirectional-override character written as its
    escape (``\\x1b``, ``\\n``, ``\\u202e``), to show it without obeying it."""
    if first_unsafe(text) is None:
        return text
    return "".join(char.encode("unicode_escape").decode() if _unsafe(char) else char
                   for char in text)
