"""Renewing a session: a later (or, asked for, an earlier) expiry, within what granted it.

A renewal never widens what was granted: the rule that grants the longer session is
decided again, the approvals a session needed must cover the new length, a break-glass
session renews only under the break-glass policy, and no session outlives its target's
``max_lifetime`` (the database holds that bound too). Every refusal is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dbaccess.broker.engines import EngineError, EngineRefused
from dbaccess.broker.identity import Principal
from dbaccess.broker.policy import AccessRequest, breakglass_covers, decide
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.broker.services.issuer import ceil_second
from dbaccess.broker.services.target_guard import TargetGuard
from dbaccess.broker.services.views import session_fields
from dbaccess.broker.store import Conflict, Lease
from dbaccess.durations import format_duration
from dbaccess.gateway.credentials import rebind_verifier
from dbaccess.wire import SessionRenew, SessionRenewed


class Renewal:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx
        self.guard = TargetGuard(ctx)  # fail fast on a target known down (target_guard.py)

    def renew(
        self, principal: Principal, lease: Lease, body: SessionRenew, origin: Origin | None = None
    ) -> SessionRenewed:
        """Move the expiry to now + duration, as long as the whole session stays within
        the maximum of a rule that (still) grants it. Never earlier than it is unless
        ``body.shorten``: a renewal meant to keep a session alive (a script running
        ``renew --duration 30m`` every 10 minutes) must not cut it short; so an earlier
        time leaves the session as it is and says so (``changed`` False)."""
        lease_id = lease.id
        now = self.ctx.clock()
        if lease.state != "active" or lease.expires_at <= now:
            raise refusals.Conflict(
                "not_active",
                f"session {lease_id} is {lease.state}",
                "start a new one with dbaccess connect",
            )
        wanted = timedelta(seconds=body.duration_seconds) if body.duration_seconds else None
        extension = wanted or (lease.expires_at - lease.created_at)
        expires_at = ceil_second(now + extension)
        if expires_at <= lease.expires_at and not body.shorten:
            return SessionRenewed(
                **session_fields(lease), changed=False, previous_expires_at=lease.expires_at
            )
        total = expires_at - lease.created_at
        lifetime = self.ctx.settings.targets[lease.target].max_lifetime

        def deny(code: str, explanation: str, rule: str | None, by: str) -> None:
            self.ctx.store.record(
                now,
                "session.renew_denied",
                principal.subject,
                {
                    "email": principal.verified_email,
                    "db_user": lease.db_user,
                    "target": lease.target,
                    "role": lease.role,
                    "requested_until": expires_at,
                    "code": code,
                    "explanation": explanation,
                    "rule": rule,
                    "refused_by": by,
                    **(origin or Origin()).detail(),
                },
                lease_id,
            )

        if total > lifetime:
            # The database refuses it too (its own bound, from the user's creation): say
            # so here, not as a database error.
            explanation = (
                f"target '{lease.target}' allows {format_duration(lifetime)} "
                "from its start (max_lifetime), however often it is renewed"
            )
            deny("max_lifetime", explanation, None, "broker")
            raise refusals.Denied(
                "max_lifetime",
                f"renewing to {expires_at:%H:%M:%S} UTC would make the session "
                f"{format_duration(total)} long: {explanation}",
                f"start a new one: dbaccess connect {lease.target} --role {lease.role}",
            )
        basis = self._renewal_basis(principal, lease, total)
        if isinstance(basis, _RenewRefusal):
            deny(basis.code, basis.explanation, basis.rule, "broker")
            raise refusals.Denied(
                basis.code,
                f"renewing to {expires_at:%H:%M:%S} UTC would make the session "
                f"{format_duration(total)} long: {basis.explanation}",
                self._renew_hint(lease, basis.most, now),
            )
        try:
            with self.guard.admitted(
                lease.target,
                "renew",
                principal,
                origin or Origin(),
                lease_id=lease_id,
                detail={
                    "db_user": lease.db_user,
                    "role": lease.role,
                    "requested_until": expires_at,
                },
            ):
                self.ctx.engines[lease.target].renew_user(lease.db_user, expires_at)
        except EngineRefused as exc:
            # the database's own bound (creation + max_lifetime) held where the broker's
            # did not, e.g. its clock runs ahead of the broker's: still the caller's limit,
            # and as much a refusal to account for as the broker's own
            deny("max_lifetime", str(exc), basis.rule, "database")
            raise refusals.Denied(
                "max_lifetime",
                f"session {lease_id} cannot last that long: {exc}",
                f"start a new one: dbaccess connect {lease.target} --role {lease.role}",
            ) from None
        except EngineError as exc:
            raise refusals.TargetFailed("database_error", str(exc)) from None
        try:
            renewed = self.ctx.store.renew(
                lease_id,
                now,
                expires_at,
                principal.subject,
                {**basis.detail(), **(origin or Origin()).detail()},
                gateway_verifier=self._rebound(lease, expires_at),
            )
        except Conflict as exc:  # revoked meanwhile: its user is being dropped anyway
            raise refusals.Conflict(
                "not_active", str(exc), f"start a new one: dbaccess connect {lease.target}"
            ) from None
        if lease.kind == "breakglass":  # loud, like the opening
            label = "DRILL: break-glass" if lease.drill else "BREAK-GLASS"
            self.ctx.notifier.send(
                "breakglass.renewed",
                f"{label}: {principal.handle} renewed {lease.role} on {lease.target} for "
                f"incident {lease.incident} until {expires_at:%Y-%m-%d %H:%M} UTC",
                user=principal.subject,
                target=lease.target,
                role=lease.role,
                db_user=lease.db_user,
                incident=lease.incident,
                drill=lease.drill,
                session_id=lease.id,
                expires_at=expires_at,
            )
        return SessionRenewed(
            **session_fields(renewed), changed=True, previous_expires_at=lease.expires_at
        )

    def _rebound(self, lease: Lease, expires_at: datetime) -> str | None:
        """A gateway session's verifier bound to its new expiry (the gateway refuses an
        expiry its binding does not cover); None: nothing to change. One the broker did
        not bind stays as it is, refused by the gateway as before."""
        gateway = self.ctx.settings.gateway
        if lease.gateway_verifier is None or gateway is None:
            return None
        return rebind_verifier(
            gateway.key.ensure(),
            lease.gateway_verifier,
            lease.db_user,
            lease.target,
            lease.role,
            lease.expires_at,
            expires_at,
        )

    def _renewal_basis(
        self, principal: Principal, lease: Lease, total: timedelta
    ) -> _RenewBasis | _RenewRefusal:
        """What a renewal to ``total`` (the session's whole length) relies on, or why
        nothing grants it. A renewal never widens what was granted: a break-glass session
        renews only under the break-glass policy; a session that needed approvals stays
        within the duration its approvers saw, unless a rule that needs none grants the
        longer one (the person could then have had it without approvers anyway)."""
        if lease.kind == "breakglass":
            return self._breakglass_renewal(principal, lease, total)
        decision = decide(
            principal,
            AccessRequest(lease.target, lease.role, total, lease.reason, lease.ticket),
            self.ctx.settings.rules,
        )
        if not decision.allowed:
            return _RenewRefusal(decision.explanation, decision.rule, decision.max_duration)
        if not decision.approvals_required:
            return _RenewBasis(decision.rule)
        request = self.ctx.store.get_request(lease.request_id) if lease.request_id else None
        if request is None:
            return _RenewRefusal(
                f"rule '{decision.rule}' grants that only with {decision.approvals_required} "
                "approval(s), and this session was not approved",
                decision.rule,
                None,
                code="approval_required",
            )
        if request.rule != decision.rule or len(request.approvals) < decision.approvals_required:
            # approved under another rule, or by fewer people than the rule now wants
            return _RenewRefusal(
                f"rule '{decision.rule}' needs {decision.approvals_required} approval(s) from "
                f"{', '.join(decision.approver_groups)}, which request {request.id} does not "
                "have",
                decision.rule,
                None,
                code="approval_required",
            )
        approved = timedelta(seconds=request.duration_seconds)
        if total > approved:
            return _RenewRefusal(
                f"request {request.id} was approved for {format_duration(approved)}; longer "
                "needs new approvals",
                decision.rule,
                approved,
                code="approval_required",
            )
        return _RenewBasis(
            decision.rule, request.id, tuple(a["by"] for a in request.approvals), approved
        )

    def _breakglass_renewal(
        self, principal: Principal, lease: Lease, total: timedelta
    ) -> _RenewBasis | _RenewRefusal:
        policy = self.ctx.settings.breakglass
        if policy is None or not breakglass_covers(policy, lease.target, lease.role):
            return _RenewRefusal(
                f"the break-glass policy no longer covers {lease.role} on '{lease.target}'",
                "breakglass",
                None,
            )
        if not principal.groups & set(policy.groups):
            return _RenewRefusal(
                f"break-glass is for members of {', '.join(policy.groups)}", "breakglass", None
            )
        if total > policy.max_duration:
            return _RenewRefusal(
                f"break-glass lasts at most {format_duration(policy.max_duration)} in all",
                "breakglass",
                policy.max_duration,
            )
        return _RenewBasis("breakglass", incident=lease.incident)

    def _renew_hint(self, lease: Lease, most: timedelta | None, now: datetime) -> str:
        again = (
            f"dbaccess breakglass {lease.target} --incident {lease.incident} --reason ..."
            if lease.kind == "breakglass"
            else f"dbaccess connect {lease.target} --role {lease.role} --reason ..."
        )
        if most is None:
            return f"for more, start a new session: {again}"
        left = lease.created_at + most - now
        if left >= timedelta(minutes=1):
            return (
                f"it may last {format_duration(most)} in all; the most left: dbaccess renew "
                f"{lease.id} --duration "
                f"{format_duration(timedelta(minutes=int(left.total_seconds() // 60)))}"
            )
        return f"it may last {format_duration(most)} in all; for more, start a new one: {again}"


@dataclass(frozen=True)
class _RenewBasis:
    """The rule (and approvals) a renewal relied on, for its audit record."""

    rule: str | None
    request_id: str | None = None
    approved_by: tuple[str, ...] = ()
    approved_duration: timedelta | None = None
    incident: str | None = None

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule}
        if self.request_id is not None:
            out.update(
                request_id=self.request_id,
                approved_by=list(self.approved_by),
                approved_duration_seconds=int(self.approved_duration.total_seconds())
                if self.approved_duration
                else None,
            )
        if self.incident is not None:
            out["incident"] = self.incident
        return out


@dataclass(frozen=True)
class _RenewRefusal:
    explanation: str
    rule: str | None
    most: timedelta | None  # the longest the session may last in all, if any length does
    code: str = "denied"
