"""Cursors of ``GET /v1/audit``: where the next (older) page starts, for one query.

A cursor is opaque to callers: ``a1.`` + base64url of ``<seq>.<digest>``, where the digest
(16 hex digits of SHA-256) names the filters it was made for. So a cursor that was edited,
truncated or made for other filters is refused (``Malformed``) instead of quietly showing records
of another query, or skipping some.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from dbaccess.broker.services import refusals

_PREFIX = "a1."
_BODY = re.compile(r"^([1-9][0-9]{0,18})\.([0-9a-f]{16})$")


def _digest(filters: dict[str, object]) -> str:
    text = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_cursor(before: int, filters: dict[str, object]) -> str:
    body = f"{before}.{_digest(filters)}".encode()
    return _PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def read_cursor(cursor: str, filters: dict[str, object]) -> int:
    """The seq the page continues before; a ``Malformed`` refusal naming what is wrong
    otherwise."""
    body = None
    if cursor.startswith(_PREFIX) and len(cursor) <= 64:
        raw = cursor[len(_PREFIX) :]
        try:
            body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            body = None
    match = _BODY.match(body) if body is not None else None
    if match is None:
        raise refusals.Malformed(
            "invalid_cursor",
            "before: not a cursor this broker gave out",
            "use the cursor of the previous page as it was (dbaccess audit prints it after "
            "'more:'), or leave out --before for the newest records",
        )
    if match.group(2) != _digest(filters):
        raise refusals.Malformed(
            "invalid_cursor",
            "before: that cursor belongs to a query with other filters",
            "repeat the filters of the page it came from, or leave out --before",
        )
    return int(match.group(1))
