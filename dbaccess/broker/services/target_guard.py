"""Two guards around issuing and renewing a session (issue 12, point 7; docs/broker.md,
"When a database fails"):

- **Fail fast on a target known to be down.** While a target's breaker
  (engines/health.py) is open, a request for a session on it, or a renewal of one, is
  answered at once with ``503 target_unreachable`` — nothing tried, nothing made — instead
  of holding a worker thread for the call's timeout; one call at a time is let through as
  a probe (none while the reaper's ping is finding out). Break-glass is always tried
  (in an incident a responder would rather wait than be refused). Revocation is never
  refused: ``DELETE`` marks the session ``revoking`` and the reaper drops the user as soon
  as the target answers again.

- **No password that went to nobody.** An issuance that ends more than
  ``DELIVERY_DEADLINE`` after the request reached the broker is not handed out: the CLI
  (30 s by default) may have given up by then, so the session is revoked at once and
  recorded (``session.undelivered``), and the answer is ``504 issuance_too_slow``. A
  deadline rather than a check for a disconnected client: a proxy in front of the broker
  keeps its connection open after the client left, and a client may leave while the
  answer is being written anyway; the time taken is known for sure.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol, TypeVar, cast

from dbaccess.broker.engines.health import DOWN_WINDOW, Down
from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.wire import SessionGranted

# Revocation.revoke_batch, handed in by whoever issues (the layers keep issuer below
# revocation): (lease id, cause) pairs, the actor, the origin's detail.
Revoke = Callable[[list[tuple[str, str]], str | None, dict[str, str | None] | None], int]

log = logging.getLogger("dbaccess.broker")

# Longer than the slowest issuance the bounds allow (3 s for a creation slot, 10 s for the
# database call, the store's writes, a token check waiting up to 3 s for the identity
# provider's keys), shorter than the CLI's default --timeout of 30 s with room for the
# network and a busy broker.
DELIVERY_DEADLINE = 20.0

# Of the time a client says it waits (its Dbaccess-Timeout header: the CLI's --timeout),
# the part an issuance may take: the rest is for the network and writing the answer.
CLIENT_SHARE = 0.75


def delivery_deadline(client_timeout: float | None) -> float:
    """How long after its arrival a session may still be handed out: DELIVERY_DEADLINE,
    or less when the client said it gives up sooner (``dbaccess --timeout 10``)."""
    if client_timeout is None:
        return DELIVERY_DEADLINE
    return min(DELIVERY_DEADLINE, round(client_timeout * CLIENT_SHARE, 3))


F = TypeVar("F", bound=Callable[..., Any])


class TargetGuard:
    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx

    @contextmanager
    def admitted(
        self,
        target: str,
        action: str,
        principal: Principal,
        origin: Origin,
        *,
        lease_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Iterator[None]:
        """Run the block if the target may be called; else refuse (503) at once."""
        engine = self._ctx.engines.get(target)
        if engine is None:  # an unknown target: the service says so
            yield
            return
        verdict = engine.health.admit()
        if isinstance(verdict, Down):
            self._refuse(target, action, verdict, principal, origin, lease_id, detail or {})
        try:
            yield
        finally:
            verdict.release()

    def _refuse(
        self,
        target: str,
        action: str,
        down: Down,
        principal: Principal,
        origin: Origin,
        lease_id: str | None,
        detail: dict[str, Any],
    ) -> NoReturn:
        service = self._ctx
        service.metrics.refused_unreachable.labels(target).inc()
        message = (
            f"target '{target}' is unreachable: the broker's calls to it got no answer "
            f"for the last {down.seconds_ago:.0f} s ({down.reason})"
        )
        hint = (
            f"nothing was {'renewed' if action == 'renew' else 'created'} on '{target}'; "
            f"try again in a few seconds (the broker keeps trying '{target}' and serves "
            "it again as soon as it answers)"
        )
        service.store.record(
            service.clock(),
            "session.renew_denied" if action == "renew" else "session.denied",
            principal.subject,
            {
                "email": principal.verified_email,
                "target": target,
                **detail,
                "code": "target_unreachable",
                "explanation": message,
                **({"refused_by": "broker"} if action == "renew" else {}),
                **origin.detail(),
            },
            lease_id,
        )
        raise refusals.Unavailable("target_unreachable", message, hint)

    def deliverable(
        self, granted: SessionGranted, principal: Principal, origin: Origin, revoke: Revoke
    ) -> SessionGranted:
        """``granted`` if it is still in time to be handed out; else revoke it, record
        why, and answer 504 (which the caller, if still there, sees)."""
        if origin.received_at is None:
            return granted
        took = time.monotonic() - origin.received_at
        deadline = delivery_deadline(origin.client_timeout)
        if took <= deadline:
            return granted
        service = self._ctx
        explanation = (
            f"the session was ready {took:.1f} s after the request arrived, later "
            f"than the {deadline:g} s within which a password is handed "
            "out: its client may have given up, so it was revoked unseen"
        )
        service.store.record(
            service.clock(),
            "session.undelivered",
            principal.subject,
            {
                "email": principal.verified_email,
                "target": granted.target,
                "role": granted.role,
                "db_user": granted.db_user,
                "took_seconds": round(took, 3),
                "deadline_seconds": deadline,
                "explanation": explanation,
                **origin.detail(),
            },
            granted.id,
        )
        log.warning(
            "a session was ready too late to be handed out; revoking it",
            extra={"target": granted.target, "lease": granted.id, "took_seconds": round(took, 3)},
        )
        revoke([(granted.id, "undelivered")], None, origin.detail())
        raise refusals.TargetTimeout(
            "issuance_too_slow",
            f"creating the session on '{granted.target}' took {took:.0f} s, longer than the "
            f"broker's {deadline:g} s deadline; it was revoked, its password "
            "never handed out",
            "try again; if it keeps happening, the target database or the broker is overloaded",
        )


class Issuing(Protocol):
    """What guarded_issue needs of the issuer it wraps (services/issuer.py)."""

    guard: TargetGuard
    revoke: Revoke


def guarded_issue(issue: F) -> F:
    """``Issuer.issue`` behind the guards: refused at once while its target is
    known down (break-glass excepted), and revoked instead of handed out when too late."""

    @functools.wraps(issue)
    def guarded(service: Issuing, principal: Principal, **kw: Any) -> SessionGranted:
        guard: TargetGuard = service.guard
        origin: Origin = kw["origin"]
        if kw.get("incident") is not None:  # break-glass: always tried
            granted = issue(service, principal, **kw)
        else:
            with guard.admitted(
                kw["target_name"],
                "create",
                principal,
                origin,
                detail={"role": kw["role"], "reason": kw.get("reason")},
            ):
                granted = issue(service, principal, **kw)
        return guard.deliverable(cast(SessionGranted, granted), principal, origin, service.revoke)

    return cast(F, guarded)


__all__ = [
    "CLIENT_SHARE",
    "DELIVERY_DEADLINE",
    "DOWN_WINDOW",
    "TargetGuard",
    "delivery_deadline",
    "guarded_issue",
]
