"""What a person asked for when a session is to be opened — by ``connect``, ``exec``,
``creds``, ``breakglass`` or the fast exec path — in one object, validated once.

Standard library only: the fast exec path builds it too, without pydantic. ``validate()``
refuses what the broker would refuse (``wire.SessionCreate`` / ``wire.BreakglassCreate``:
lengths, control and direction characters) with the usage error its 422 answer would
give, in the words pydantic uses there; tests/client/session/test_request.py keeps the
two equal. ``to_wire()`` is the body of ``POST /v1/sessions`` (or ``/v1/breakglass``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from dbaccess.durations import MAX_SECONDS
from dbaccess.errors import UsageError
from dbaccess.text import refuse_unsafe

# The broker's limits on the text of a request (wire.SessionCreate, wire.BreakglassCreate).
# Required fields: (min, max); optional ones have a max only.
_SESSION_FIELDS = {
    "target": (1, 64),
    "role": (1, 64),
    "reason": (None, 500),
    "ticket": (None, 100),
    "request_id": (None, 36),
}
_BREAKGLASS_FIELDS = {"target": (None, 64), "incident": (1, 100), "reason": (1, 500)}


@dataclass(frozen=True, kw_only=True)
class SessionRequest:
    """One session request, from the flags to the broker's body."""

    target: str
    role: str
    duration: timedelta | None = None
    reason: str | None = None
    ticket: str | None = None
    request_id: str | None = None  # redeem this approved request (--request)
    wait: bool = True  # wait for approvers; False (--no-wait): 'approval pending' at once
    # break-glass: an incident makes it one (POST /v1/breakglass, the policy's role)
    incident: str | None = None
    drill: bool = False
    # what runs in the session: connect's client (--client) and its arguments, or exec's
    # command instead of any client
    client: str | None = None
    client_args: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None

    @property
    def breakglass(self) -> bool:
        return self.incident is not None

    @property
    def duration_seconds(self) -> int | None:
        return int(self.duration.total_seconds()) if self.duration else None

    def validate(self) -> SessionRequest:
        """``self``, or UsageError with every refusal the broker would answer, in its order."""
        problems: list[str] = []
        fields = _BREAKGLASS_FIELDS if self.breakglass else _SESSION_FIELDS
        order = (
            ("target", "incident", "reason", "duration_seconds")
            if self.breakglass
            else ("target", "role", "duration_seconds", "reason", "ticket", "request_id")
        )
        for name in order:
            if name == "duration_seconds":
                problem = _seconds_problem(self.duration_seconds)
            else:
                low, high = fields[name]
                problem = _text_problem(getattr(self, name), low, high)
            if problem:
                problems.append(f"{name}: {problem}")
        if problems:
            raise UsageError("; ".join(problems))
        return self

    def to_wire(self) -> dict[str, Any]:
        """The JSON body the broker expects, without the fields left out."""
        if self.breakglass:
            body: dict[str, Any] = {
                "target": self.target,
                "incident": self.incident,
                "reason": self.reason,
                "duration_seconds": self.duration_seconds,
            }
            if self.drill:
                body["drill"] = True
        else:
            body = {
                "target": self.target,
                "role": self.role,
                "duration_seconds": self.duration_seconds,
                "reason": self.reason,
                "ticket": self.ticket,
                "request_id": self.request_id,
            }
        return {k: v for k, v in body.items() if v is not None}

    def with_reason(self, reason: str | None) -> SessionRequest:
        """The same request with the reason asked for, checked again."""
        return replace(self, reason=reason).validate()

    def redeeming(self, request_id: str) -> SessionRequest:
        """What redeems an approved request: its id, nothing more to wait for (the
        duration, reason and ticket are the request's own)."""
        return replace(
            self, duration=None, reason=None, ticket=None, request_id=request_id, wait=False
        )


def _text_problem(value: str | None, low: int | None, high: int) -> str | None:
    """pydantic's message for ``value`` under ``Field(min_length, max_length)`` on the
    ``wire.Text`` type: a required field checks the length first, then the characters; an
    optional one (``Text | None``) the characters first, then the length."""
    if value is None:
        return None if low is None else "Field required"
    if low is not None:
        if len(value) < low:
            return f"String should have at least {low} character{'s' if low != 1 else ''}"
        if len(value) > high:
            return f"String should have at most {high} characters"
    try:
        refuse_unsafe(value)
    except ValueError as exc:
        return f"Value error, {exc}"
    if low is None and len(value) > high:
        return f"Value should have at most {high} items after validation, not {len(value)}"
    return None


def _seconds_problem(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    if seconds <= 0:
        return "Input should be greater than 0"
    if seconds > MAX_SECONDS:
        return f"Input should be less than or equal to {MAX_SECONDS}"
    return None
