"""What the broker refuses, and why, in the services' own words: each kind of refusal is a
class, each refusal carries the ``code``, ``message`` and ``hint`` the caller is shown.

The services raise these and know nothing of HTTP; ``api/errors.py`` holds the one table
from kind to status and writes the envelope ``{"error": {code, message, hint}}``. The
routes and their dependencies raise them too, so that table is the only place a status is
chosen for a refusal.

    Refusal
     ├── Malformed        a value the broker cannot read at all (a cursor it never gave out)
     ├── Invalid          a value it reads but will not take (an id prefix that is too short)
     ├── Unauthenticated  no caller, or not one it believes (no token, an invalid token)
     ├── Denied           the caller may not (policy, max_lifetime, self-approval)
     ├── NotFound         nothing by that name that the caller may see
     ├── Conflict         not in this state (a used request, an ambiguous id, a race lost)
     ├── OverLimit        a cap on live sessions or connections would be exceeded
     ├── Unavailable      something the broker needs is down (the identity provider)
     ├── TargetFailed     the target database refused or failed the call
     └── TargetTimeout    the target database took too long
"""

from __future__ import annotations


class Refusal(Exception):
    """A request the broker will not carry out: ``code`` for programs, ``message`` and
    ``hint`` (what to do instead) for people."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


class Malformed(Refusal):
    """A value the broker cannot read at all."""


class Invalid(Refusal):
    """A value the broker reads but will not take."""


class Unauthenticated(Refusal):
    """No caller, or one whose token the broker does not believe."""


class Denied(Refusal):
    """The caller is known and may not do this."""


class NotFound(Refusal):
    """Nothing by that name among what the caller may see."""


class Conflict(Refusal):
    """What it names is not in a state that allows this (or is ambiguous)."""


class OverLimit(Refusal):
    """A cap on live sessions or connections would be exceeded."""


class Unavailable(Refusal):
    """Something the broker relies on does not answer now; the request itself was fine."""


class TargetFailed(Refusal):
    """The target database refused or failed what the broker asked of it."""


class TargetTimeout(Refusal):
    """The target database did not finish in time."""
