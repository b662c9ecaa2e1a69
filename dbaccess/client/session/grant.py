"""Getting a granted session from the broker: directly, after approval, or by breaking
the glass. No terminal code here: the CLI passes in how to ask and how to show waiting.

Approval flow: ``POST /v1/sessions`` answers 202 with a pending request when the rule
needs approvers. With ``wait`` the request is polled until it is approved (then redeemed
with ``request_id``), denied or expired; without, ApprovalPending carries its id, so a
script can exit with the 'approval pending' code and come back with ``--request ID``.
Ctrl-C while waiting leaves the request open and says how to resume (``--request ID``,
which waits again while it is pending) or withdraw it; asking again without ``--request``
gets the same open request back from the broker, not a new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dbaccess.client.session.request import SessionRequest
from dbaccess.errors import ApprovalPending, DbaccessError, DeniedError, ExitCode, UsageError
from dbaccess.timestamps import human as human_time

POLL_SECONDS = 2.0


class WaitStopped(DbaccessError):
    """Ctrl-C while waiting for approvers. Exits 130 like any interrupted command — the
    person chose to stop — but names the request, which stays open, and the commands to
    resume or withdraw it. (Scripts that want 'pending' as a result use --no-wait: 6.)"""

    exit_code = ExitCode.INTERRUPTED
    code = "interrupted"


@contextmanager
def _quietly(_: Any) -> Iterator[None]:
    yield


@dataclass(frozen=True)
class Ask:
    """How to talk to the person, when there is one. ``reason`` is None without a
    terminal (or with --no-input): then nothing is asked and a missing answer is an error."""

    reason: Callable[[str], str] | None = None
    # Wraps the wait for approvers (the CLI shows a spinner); gets the pending request.
    waiting: Callable[[Any], AbstractContextManager[None]] = _quietly
    sleep: Callable[[float], None] = time.sleep
    poll_seconds: float = POLL_SECONDS
    # The command the person ran, for the hints that say what to run next (connect, exec,
    # tunnel), and the options of theirs it needs again (the tunnel's " --port 5433").
    resume_verb: str = "connect"
    resume_options: str = ""

    def again(self, target: str, role: str, *more: str) -> str:
        """The command the person ran, for ``target`` and ``role``, with ``more`` options."""
        tail = " -- ..." if self.resume_verb == "exec" else ""
        extra = "".join(f" {option}" for option in more)
        return (
            f"dbaccess {self.resume_verb} {target} --role {role}{self.resume_options}{extra}{tail}"
        )


# The broker and its pending request as the session core sees them; types only (Protocol
# classes cost start-up, and the fast exec path imports this module).
if TYPE_CHECKING:

    class Pending(Protocol):
        """An open approval request as the broker describes it (``wire.RequestInfo``)."""

        @property
        def id(self) -> str: ...
        @property
        def state(self) -> str: ...
        @property
        def target(self) -> str: ...
        @property
        def role(self) -> str: ...
        @property
        def approvals_required(self) -> int: ...
        @property
        def approver_groups(self) -> list[str]: ...
        @property
        def expires_at(self) -> Any: ...
        @property
        def denied_by(self) -> str | None: ...
        @property
        def deny_reason(self) -> str | None: ...

    class SessionBroker(Protocol):
        """The broker calls a session needs, over httpx (``broker_api.BrokerClient``) or the
        standard library (``stdlib_broker.StdlibBroker``, the fast exec path)."""

        def create_session(self, request: SessionRequest) -> Any:
            """The granted session (it has a ``password``), or the pending request opened."""
            ...

        def breakglass(self, request: SessionRequest) -> Any: ...

        def get_request(self, request_id: str) -> Any: ...

        def revoke(self, session_id: str) -> str:
            """Revoke the session; its new state (``revoked``, or ``revoking`` while the
            broker retries dropping the user)."""
            ...

        def targets(self) -> list[Any]: ...

        def breakglass_policy(self) -> Any: ...


def granted_answer(outcome: Any) -> bool:
    """Whether the broker's answer to ``POST /v1/sessions`` is a session (it holds the
    password), not a pending request."""
    return hasattr(outcome, "password")


def obtain(api: SessionBroker, want: SessionRequest, ask: Ask) -> Any:
    """The granted session for ``want`` (validated already: ``SessionRequest.validate``)."""
    if want.breakglass:
        return api.breakglass(want)
    while True:
        try:
            outcome = api.create_session(want)
        except DeniedError as exc:
            if exc.broker_code == "reason_required" and ask.reason is not None and not want.reason:
                reason = ask.reason(exc.message)
                if reason.strip():
                    want = want.with_reason(reason)
                    continue
            if exc.broker_code == "request_pending" and want.request_id:
                # --request names a request still waiting: wait for it (resuming after
                # Ctrl-C), or with --no-wait say it is pending.
                outcome = api.get_request(want.request_id)
                want = once_approved(api, outcome, want, ask)
                continue
            raise
        if granted_answer(outcome):
            return outcome
        want = once_approved(api, outcome, want, ask)


def once_approved(
    api: SessionBroker, request: Pending, want: SessionRequest, ask: Ask
) -> SessionRequest:
    """After the broker opened ``request``: wait for its approval and return what redeems
    it — or, without ``want.wait``, raise ApprovalPending naming it. A request already
    approved (an open one the broker handed back) is redeemed at once."""
    if request.state == "approved":
        return want.redeeming(request.id)
    if not want.wait:
        raise ApprovalPending(
            f"request {request.id} waits for {request.approvals_required} approval(s) "
            f"from {', '.join(request.approver_groups)}",
            hint=f"once approved: {ask.again(want.target, want.role, '--request', request.id)}",
        )
    approved = wait_for_approval(api, request, ask)
    return want.redeeming(approved.id)


def wait_for_approval(api: SessionBroker, request: Pending, ask: Ask) -> Pending:
    """Poll until the request is approved; denial and expiry are errors. Ctrl-C leaves
    the request pending (it expires by itself) and raises WaitStopped naming it."""
    try:
        with ask.waiting(request):
            while request.state == "pending":
                ask.sleep(ask.poll_seconds)
                request = api.get_request(request.id)
    except KeyboardInterrupt:
        raise WaitStopped(
            f"stopped waiting; request {request.id} stays pending (until "
            f"{human_time(request.expires_at)}) — approvers can still approve it",
            hint=f"resume: {ask.again(request.target, request.role, '--request', request.id)}; "
            f"or withdraw it: dbaccess withdraw {request.id}",
        ) from None
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
            hint=f"ask again: {ask.again(request.target, request.role)}",
        )
    if request.state == "withdrawn":
        raise DeniedError(
            f"request {request.id} was withdrawn",
            hint=f"ask again: {ask.again(request.target, request.role, '--reason ...')}",
        )
    raise DbaccessError(f"request {request.id} is {request.state}")


def choose_breakglass_target(
    api: SessionBroker,
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
    choices: list[str] = sorted(policy.targets)
    if len(choices) == 1:
        return choices[0]
    if choose is None:
        raise UsageError(
            f"break-glass covers several targets: {', '.join(choices)}",
            hint=f"name one: dbaccess breakglass {choices[0]} --incident ...",
        )
    return choose(choices)
