"""Getting a granted session from the broker: directly, after approval, or by breaking
the glass. No terminal code here: the CLI passes in how to ask and how to show waiting.

Approval flow: ``POST /v1/sessions`` answers 202 with a pending request when the rule
needs approvers. With ``wait`` the request is polled until it is approved (then redeemed
with ``request_id``), denied or expired; without, ApprovalPending carries its id, so a
script can exit with the 'approval pending' code and come back with ``--request ID``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta

from pydantic import ValidationError

from dbaccess.client import BrokerClient
from dbaccess.errors import ApprovalPending, DbaccessError, DeniedError, UsageError
from dbaccess.models import BreakglassCreate, RequestInfo, SessionCreate, SessionGranted

POLL_SECONDS = 2.0


@contextmanager
def _quietly(_: RequestInfo) -> Iterator[None]:
    yield


@dataclass(frozen=True)
class Ask:
    """How to talk to the person, when there is one. ``reason`` is None without a
    terminal (or with --no-input): then nothing is asked and a missing answer is an error."""

    reason: Callable[[str], str] | None = None
    # Wraps the wait for approvers (the CLI shows a spinner); gets the pending request.
    waiting: Callable[[RequestInfo], AbstractContextManager[None]] = _quietly
    sleep: Callable[[float], None] = time.sleep
    poll_seconds: float = POLL_SECONDS


@dataclass(frozen=True)
class Want:
    """What to ask the broker for."""

    target: str
    role: str
    duration: timedelta | None = None
    reason: str | None = None
    ticket: str | None = None
    request_id: str | None = None  # redeem this approved request
    wait: bool = True  # wait for approvers (False: --no-wait)
    breakglass: BreakglassCreate | None = None


def obtain(api: BrokerClient, want: Want, ask: Ask) -> SessionGranted:
    if want.breakglass is not None:
        return api.breakglass(want.breakglass)
    reason = want.reason
    while True:
        body = _session_create(
            target=want.target,
            role=want.role,
            duration_seconds=int(want.duration.total_seconds()) if want.duration else None,
            reason=reason,
            ticket=want.ticket,
            request_id=want.request_id,
        )
        try:
            outcome = api.create_session(body)
        except DeniedError as exc:
            if exc.broker_code == "reason_required" and ask.reason is not None and not reason:
                reason = ask.reason(exc.message)
                if reason.strip():
                    continue
            raise
        if isinstance(outcome, SessionGranted):
            return outcome
        want = once_approved(api, outcome, want, ask)
        reason = None


def _session_create(**fields: object) -> SessionCreate:
    """The request body, or — for values the broker would refuse (too long...) — the
    UsageError its 422 answer would give, without asking it."""
    try:
        return SessionCreate.model_validate(fields)
    except ValidationError as exc:
        raise UsageError(
            "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                      for e in exc.errors())
        ) from None


def once_approved(api: BrokerClient, request: RequestInfo, want: Want, ask: Ask) -> Want:
    """After the broker opened ``request``: wait for its approval and return what redeems
    it — or, without ``want.wait``, raise ApprovalPending naming it."""
    if not want.wait:
        raise ApprovalPending(
            f"request {request.id} waits for {request.approvals_required} approval(s) "
            f"from {', '.join(request.approver_groups)}",
            hint=f"once approved: dbaccess connect {want.target} --role {want.role} "
            f"--request {request.id}",
        )
    approved = wait_for_approval(api, request, ask)
    return Want(target=want.target, role=want.role, request_id=approved.id, wait=False)


def wait_for_approval(api: BrokerClient, request: RequestInfo, ask: Ask) -> RequestInfo:
    """Poll until the request is approved; denial and expiry are errors. Ctrl-C leaves
    the request pending (it expires by itself)."""
    with ask.waiting(request):
        while request.state == "pending":
            ask.sleep(ask.poll_seconds)
            request = api.get_request(request.id)
    if request.state == "approved":
        return request
    if request.state == "denied":
        raise DeniedError(
            f"request {request.id} was denied by {request.denied_by}: {request.deny_reason}",
            hint="talk to the approver, then ask again",
        )
    if request.state == "expired":
        raise DeniedError(
            f"request {request.id} expired before it was approved",
            hint=f"ask again: dbaccess connect {request.target} --role {request.role}",
        )
    raise DbaccessError(f"request {request.id} is {request.state}")


def choose_breakglass_target(
    api: BrokerClient,
    preferred: str | None,
    choose: Callable[[list[str]], str] | None,
) -> str:
    """The target of a break-glass session: the one named (flag or profile), else the
    policy's only one, else ask — or, without a terminal, fail listing the choices."""
    if preferred:
        return preferred
    policy = api.breakglass_policy()
    if not policy.allowed:
        raise DeniedError(
            "you may not break the glass on this broker",
            hint="break-glass is for the on-call groups of the broker's policy",
        )
    choices = sorted(policy.targets)
    if len(choices) == 1:
        return choices[0]
    if choose is None:
        raise UsageError(
            f"break-glass covers several targets: {', '.join(choices)}",
            hint=f"name one: dbaccess breakglass {choices[0]} --incident ...",
        )
    return choose(choices)
