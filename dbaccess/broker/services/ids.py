"""Ids given by a unique prefix (``dbaccess revoke 3f0c``), resolved in one place.

Broker-side, so every client (the CLI, its fast exec path, a script on the API) gets the
same rule, and because only the broker knows which ids the caller may see: candidates of
an ambiguous prefix are listed from those alone, never someone else's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from dbaccess.broker.services import refusals

MIN_PREFIX = 4  # 16^4 = 65536 values: short enough to type, long enough to be unique
# Approving or denying by prefix: a requester who withdraws and asks again until a new id
# starts like the one an approver is typing could swap the request being approved; 16^8
# ids to grind through make that impractical.
DECISION_PREFIX = 8
_ID_CHARS = re.compile(r"[0-9a-f-]{1,36}")  # the characters of a UUID, so no LIKE wildcard


def resolve_id(
    given: str,
    candidates: Callable[[str], Sequence[str]],
    *,
    noun: str,
    not_found: refusals.NotFound,
    listing: str,
    min_prefix: int = MIN_PREFIX,
) -> str:
    """The one id the caller may see that ``given`` is or starts with. ``candidates``
    returns, for a prefix, the matching ids visible to the caller (a few are enough).
    Not an id's characters or no match: ``not_found``; too short: Invalid; several: Conflict
    listing them."""
    prefix = given.strip().lower()
    if not _ID_CHARS.fullmatch(prefix):
        raise not_found
    if len(prefix) < min_prefix:
        raise refusals.Invalid(
            "invalid_request",
            f"'{given}' is too short to name a {noun}: give at least {min_prefix} "
            "characters of its id",
            listing,
        )
    found = list(candidates(prefix))
    if prefix in found:
        return prefix  # a whole id
    if not found:
        raise not_found
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise refusals.Conflict(
            "ambiguous_id",
            f"'{given}' is the start of {len(found) if len(found) <= 5 else 'several'} "
            f"{noun}s you can see: {shown}",
            f"give more characters of the id ({listing})",
        )
    return found[0]
