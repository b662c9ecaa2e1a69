"""A person's own sessions: asking for one, listing, renewing and revoking them; and the
broker's services over one context, which the routes and the reaper reach from here.

Asking: the target and role must exist, then the policy decides: a refusal (audited), an
approval request (services/approvals.py), or a session at once (services/issuer.py).
Renewing is services/renewal.py, revoking services/revocation.py.
"""

from __future__ import annotations

from datetime import timedelta

from dbaccess.broker.identity import Principal
from dbaccess.broker.policy import AccessRequest, Decision, decide
from dbaccess.broker.services import refusals
from dbaccess.broker.services.approvals import Approvals
from dbaccess.broker.services.audit import AuditTrail
from dbaccess.broker.services.breakglass import Breakglass
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.broker.services.ids import resolve_id
from dbaccess.broker.services.incident_review import IncidentReviews
from dbaccess.broker.services.inventory import StandingAccounts
from dbaccess.broker.services.issuer import Issuer, target_role
from dbaccess.broker.services.renewal import Renewal
from dbaccess.broker.services.revocation import Revocation
from dbaccess.broker.services.statements import StatementRecords
from dbaccess.broker.services.targets import Targets
from dbaccess.broker.services.views import session_info
from dbaccess.broker.store import ApprovalRequest, Lease, approval_requests, leases
from dbaccess.durations import format_duration
from dbaccess.wire import (
    RequestInfo,
    SessionCreate,
    SessionGranted,
    SessionInfo,
    SessionRenew,
    SessionRenewed,
)


class SessionService:
    """The API's way in: a person's own sessions here, the other services beside them,
    all over the one ``ctx`` (none reaches back into another through this object)."""

    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.revocation = Revocation(ctx)
        self.issuer = Issuer(ctx, self.revocation.revoke_batch)
        self.renewal = Renewal(ctx)
        self.approvals = Approvals(ctx)
        self.breakglass = Breakglass(ctx, self.issuer)
        self.targets = Targets(ctx)
        self.audit = AuditTrail(ctx)
        self.statements = StatementRecords(ctx)
        self.inventory = StandingAccounts(ctx)
        self.incidents = IncidentReviews(ctx)

    def create(
        self, principal: Principal, body: SessionCreate, origin: Origin | None = None
    ) -> SessionGranted | RequestInfo:
        """A session now, or — when the matching rule needs approvals — a pending approval
        request as the caller sees it (``body.request_id`` then redeems the approved
        request)."""
        outcome = self._ask(principal, body, origin or Origin())
        if isinstance(outcome, SessionGranted):
            return outcome
        return self.approvals.info(principal, outcome)

    def _ask(
        self, principal: Principal, body: SessionCreate, origin: Origin
    ) -> SessionGranted | ApprovalRequest:
        # 404s come before any policy answer
        target_role(self.ctx.settings, body.target, body.role)
        if not body.request_id:
            # Asked again while a request is open: that one, not a second one (its policy
            # is checked again when it is used). Before the reason check, so a retry after
            # Ctrl-C need not type the reason again.
            reused = self.approvals.reusable(principal, body, origin)
            if reused is not None:
                return reused
        request = self._approved_request(principal, body) if body.request_id else None
        reason: str | None
        if request is not None:
            requested: timedelta | None = timedelta(seconds=request.duration_seconds)
            reason, ticket = request.reason, request.ticket
        else:
            requested = timedelta(seconds=body.duration_seconds) if body.duration_seconds else None
            reason, ticket = body.reason, body.ticket
        now = self.ctx.clock()
        decision = decide(
            principal,
            AccessRequest(body.target, body.role, requested, reason, ticket),
            self.ctx.settings.rules,
            # an approved request was decided by its approvers: the schedule is not asked
            on_call=None if request is not None else self.ctx.schedules.shift,
            now=now,
        )
        if decision.allowed and decision.approvals_required and not (reason or "").strip():
            decision = Decision(
                False,
                f"rule '{decision.rule}' needs approval, and approvers need a reason (--reason)",
                decision.rule,
                missing="reason",
            )
        if not decision.allowed or decision.duration is None:
            self.ctx.store.record(
                now,
                "session.denied",
                principal.subject,
                {
                    "email": principal.verified_email,
                    "target": body.target,
                    "role": body.role,
                    "reason": reason,
                    "explanation": decision.explanation,
                    "rule": decision.rule,
                    **origin.detail(),
                },
            )
            self.ctx.metrics.denied.labels(body.target).inc()
            if decision.missing == "reason":
                raise refusals.Denied("reason_required", decision.explanation, "add --reason TEXT")
            if decision.max_duration is not None:
                most = format_duration(decision.max_duration)
                raise refusals.Denied(
                    "denied",
                    decision.explanation,
                    f"ask for at most {most}: dbaccess connect {body.target} --role "
                    f"{body.role} --duration {most}",
                )
            if decision.rule is None:
                raise refusals.Denied("denied", *self.targets.what_you_may(principal, body.target))
            raise refusals.Denied("denied", decision.explanation)
        if decision.approvals_required and request is None:
            return self.approvals.open(principal, body, decision, origin)
        if (
            request is not None
            and decision.approvals_required
            and (
                request.rule != decision.rule
                or len(request.approvals) < decision.approvals_required
            )
        ):
            # the policy changed since the approvals (another rule or tier now, or more
            # approvers): what they approved is not what the policy asks for now, as a
            # renewal would also find
            raise refusals.Denied(
                "approval_required",
                f"rule '{decision.rule}' now needs {decision.approvals_required} approval(s) "
                f"from {', '.join(decision.approver_groups)}, which request {request.id} "
                "does not have",
                f"ask again: dbaccess connect {body.target} --role {body.role} --reason TEXT",
            )
        return self.issuer.issue(
            principal,
            target_name=body.target,
            role=body.role,
            duration=decision.duration,
            rule=decision.rule,
            reason=reason,
            ticket=ticket,
            origin=origin,
            request=request,
            on_call=None if decision.on_call is None else decision.on_call.evidence(),
        )

    def _approved_request(self, principal: Principal, body: SessionCreate) -> ApprovalRequest:
        assert body.request_id is not None
        found = resolve_id(
            body.request_id,
            lambda prefix: self.ctx.store.ids_starting_with(
                approval_requests, prefix, approval_requests.c.subject == principal.subject
            ),
            noun="request",
            not_found=refusals.NotFound(
                "not_found",
                f"no approval request {body.request_id} of yours",
                "dbaccess requests --mine lists your requests",
            ),
            listing="dbaccess requests --mine lists them",
        )
        request = self.ctx.store.get_request(found)
        assert request is not None
        if (request.target, request.role) != (body.target, body.role):
            raise refusals.Conflict(
                "request_mismatch",
                f"request {request.id} is for role '{request.role}' on '{request.target}'",
                f"dbaccess connect {request.target} --role {request.role} --request {request.id}",
            )
        if request.state != "approved" or request.expires_at <= self.ctx.clock():
            state = "expired" if request.expires_at <= self.ctx.clock() else request.state
            left = request.approvals_required - len(request.approvals)
            message = {
                "pending": f"request {request.id} still waits for {left} approval(s)",
                "used": f"request {request.id} was already used: each approval grants one session",
                "denied": f"request {request.id} was denied by {request.denied_by}: "
                f"{request.deny_reason}",
                "expired": f"request {request.id} expired at "
                f"{request.expires_at:%Y-%m-%d %H:%M} UTC",
                "withdrawn": f"request {request.id} was withdrawn: it cannot be used",
            }.get(state, f"request {request.id} is {state}")
            hint = (
                "dbaccess requests --mine shows its approvals"
                if state == "pending"
                else f"ask again: dbaccess connect {request.target} --role {request.role} "
                "--reason ..."
            )
            raise refusals.Conflict(f"request_{state}", message, hint)
        return request

    def list_for(self, principal: Principal) -> list[SessionInfo]:
        return [session_info(lease) for lease in self.ctx.store.sessions_of(principal.subject)]

    def _own(self, principal: Principal, lease_id: str) -> Lease:
        """The caller's session that ``lease_id`` (a whole id or a unique prefix) names."""
        found = resolve_id(
            lease_id,
            lambda prefix: self.ctx.store.ids_starting_with(
                leases, prefix, leases.c.subject == principal.subject
            ),
            noun="session",
            not_found=refusals.NotFound(
                "not_found",
                f"no session {lease_id} of yours",
                "dbaccess sessions lists your sessions",
            ),
            listing="dbaccess sessions lists them",
        )
        lease = self.ctx.store.get(found)
        assert lease is not None
        return lease

    def renew_for(
        self, principal: Principal, lease_id: str, body: SessionRenew, origin: Origin | None = None
    ) -> SessionRenewed:
        """Renew the caller's session ``lease_id`` names (services/renewal.py)."""
        return self.renewal.renew(principal, self._own(principal, lease_id), body, origin)

    def revoke_for(
        self, principal: Principal, lease_id: str, origin: Origin | None = None
    ) -> SessionInfo:
        lease_id = self._own(principal, lease_id).id
        self.revocation.revoke_batch(
            [(lease_id, "user")],
            actor=principal.subject,
            origin=(origin or Origin()).detail(),
            skip_troubled=True,  # target known down: revoking now, dropped when it answers
        )
        current = self.ctx.store.get(lease_id)
        assert current is not None
        return session_info(current)
