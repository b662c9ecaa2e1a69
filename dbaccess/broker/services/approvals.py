"""Approval requests: risky access waits for N people from the rule's approver groups.

A request names the target, role, duration, reason and ticket it was made with; once
approved it grants exactly one session (``POST /v1/sessions`` with ``request_id``), and
the policy is checked again at that moment. Nobody approves their own request, nobody
approves twice, and a request not approved and used within ``broker.request_ttl``
expires. The requester may withdraw a request that is pending (or approved and unused),
and asking again while one is open gets that one back (``reusable``). Every step is
audited and announced to the webhooks.
"""

from __future__ import annotations

from datetime import timedelta

from dbaccess.broker.identity import Principal
from dbaccess.broker.policy import Decision, rule_applies
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.broker.services.ids import DECISION_PREFIX, MIN_PREFIX, resolve_id
from dbaccess.broker.store import ApprovalRequest, Conflict, approval_requests
from dbaccess.durations import format_duration
from dbaccess.wire import ApprovalInfo, RequestInfo, SessionCreate


class Approvals:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def open(
        self, principal: Principal, body: SessionCreate, decision: Decision, origin: Origin
    ) -> ApprovalRequest:
        assert decision.rule is not None and decision.duration is not None
        ctx = self.ctx
        request, created = ctx.store.create_request(
            now=ctx.clock(),
            subject=principal.subject,
            email=principal.verified_email,
            claimed_email=principal.email,
            target=body.target,
            role=body.role,
            duration=decision.duration,
            reason=(body.reason or "").strip(),
            ticket=body.ticket,
            rule=decision.rule,
            approvals_required=decision.approvals_required,
            approver_groups=list(decision.approver_groups),
            ttl=ctx.settings.broker.request_ttl,
            source=origin.source,
            user_agent=origin.user_agent,
            tier=decision.tier,
        )
        if not created:  # another replica opened the same request a moment ago
            self._reused(principal, request, origin)
            return request
        ctx.notifier.send(
            "request.created",
            f"{principal.handle} asks for {request.role} on {request.target} for "
            f"{format_duration(decision.duration)}: {request.reason} — needs "
            f"{request.approvals_required} approval(s) from "
            f"{', '.join(request.approver_groups)}"
            + (f" (tier '{request.tier}')" if request.tier else "")
            + f"; dbaccess approve {request.id}"
            + (f", or open {link}" if (link := _link(ctx, request)) else ""),
            **_fields(request, ctx),
        )
        return request

    def reusable(
        self, principal: Principal, body: SessionCreate, origin: Origin
    ) -> ApprovalRequest | None:
        """The caller's open request (pending, or approved and unused) for this target and
        role, which a retry gets back instead of a new one — so Ctrl-C and asking again,
        or a script retrying, never piles up requests for approvers. A retry may leave
        out the duration, reason and ticket; one that names different ones is refused (a
        Conflict) rather than silently dropped: the approvers decide on what they were shown.

        Only where a rule for this person, target and role needs approvers: sessions that
        need none (the hot path) cost no extra read."""
        if not any(
            rule.may_need_approval(body.role)
            and rule_applies(rule, principal, body.target, body.role)
            for rule in self.ctx.settings.rules
        ):
            return None
        # Past their deadline, requests are not open (open_request compares expires_at),
        # whether or not the reaper has marked them expired yet.
        request = self.ctx.store.open_request(
            self.ctx.clock(), principal.subject, body.target, body.role
        )
        if request is None:
            return None
        differs = [
            f"{name} {shown(mine)} (the open request has {shown(theirs)})"
            for name, mine, theirs, shown in (
                (
                    "duration",
                    body.duration_seconds,
                    request.duration_seconds,
                    lambda v: format_duration(timedelta(seconds=v)),
                ),
                ("reason", (body.reason or "").strip() or None, request.reason, repr),
                ("ticket", body.ticket, request.ticket, repr),
            )
            if mine is not None and mine != theirs
        ]
        if differs:
            raise refusals.Conflict(
                "request_open",
                f"you already have request {request.id} ({request.state}) for {request.role} "
                f"on {request.target}, and you asked for another {'; '.join(differs)}",
                f"use it: dbaccess connect {request.target} --role {request.role} --request "
                f"{request.id}; or withdraw it first: dbaccess withdraw {request.id}",
            )
        self._reused(principal, request, origin)
        return request

    def _reused(self, principal: Principal, request: ApprovalRequest, origin: Origin) -> None:
        """Each ask that got an open request back is on the trail too (who asked again,
        when, from where), though nothing new was opened."""
        self.ctx.store.record(
            self.ctx.clock(),
            "request.reused",
            principal.subject,
            {
                "request_id": request.id,
                "email": principal.verified_email,
                "target": request.target,
                "role": request.role,
                "state": request.state,
                **origin.detail(),
            },
        )

    def withdraw(self, principal: Principal, request_id: str, origin: Origin) -> RequestInfo:
        """The requester takes a pending (or approved, unused) request back."""
        request = self._visible(principal, request_id)
        if request.subject != principal.subject:
            raise refusals.Denied(
                "not_requester",
                f"request {request.id} is {request.email or request.subject}'s: only the "
                "requester withdraws a request",
                f"to refuse it: dbaccess deny {request.id} --reason ...",
            )
        try:
            request = self.ctx.store.withdraw_request(
                request.id, principal.subject, self.ctx.clock(), origin.detail()
            )
        except Conflict as exc:
            raise refusals.Conflict(
                "conflict", str(exc), "dbaccess requests --mine lists your requests"
            ) from None
        self.ctx.notifier.send(
            "request.withdrawn",
            f"{principal.handle} withdrew their request for {request.role} on "
            f"{request.target}: nothing to approve",
            **_fields(request, self.ctx),
        )
        return self.info(principal, request)

    def may_decide(self, principal: Principal, request: ApprovalRequest) -> bool:
        return principal.subject != request.subject and bool(
            principal.groups & set(request.approver_groups)
        )

    def visible_to(self, principal: Principal, *, mine: bool) -> list[RequestInfo]:
        """``mine``: the caller's own requests; otherwise the pending ones the caller may
        approve or deny. Requests past their deadline are expired first."""
        self.expire()
        if mine:
            found = self.ctx.store.requests(subject=principal.subject)
        else:
            found = [
                r
                for r in self.ctx.store.requests(states=("pending",))
                if self.may_decide(principal, r)
            ]
        return [self.info(principal, r) for r in found]

    def get(self, principal: Principal, request_id: str) -> RequestInfo:
        request = self._visible(principal, request_id)
        return self.info(principal, request)

    def approve(self, principal: Principal, request_id: str, origin: Origin) -> RequestInfo:
        request = self._decidable(principal, request_id)
        try:
            # the approver's email, verified or not, for the checks (a match only refuses);
            # kept with the approval, where people read who approved, only when verified
            request = self.ctx.store.approve_request(
                request.id,
                principal.subject,
                self.ctx.clock(),
                origin.detail(),
                principal.email,
                email_verified=principal.email_verified,
            )
        except Conflict as exc:
            raise refusals.Conflict(
                "conflict", str(exc), "dbaccess requests lists what you can act on"
            ) from None
        remaining = request.approvals_required - len(request.approvals)
        text = (
            f"{principal.handle} approved {request.subject}'s request for {request.role} on "
            f"{request.target}"
            + (
                f"; {remaining} more approval(s) needed"
                if remaining > 0
                else f"; approved — dbaccess connect {request.target} --role {request.role} "
                f"--request {request.id}"
            )
        )
        self.ctx.notifier.send(
            "request.approved", text, approver=principal.subject, **_fields(request, self.ctx)
        )
        return self.info(principal, request)

    def deny(
        self, principal: Principal, request_id: str, reason: str | None, origin: Origin
    ) -> RequestInfo:
        """Deny the request ``request_id`` names; a denial needs a reason, checked first."""
        reason = (reason or "").strip()
        if not reason:
            raise refusals.Invalid("invalid_request", "a denial needs a reason", "--reason TEXT")
        request = self._decidable(principal, request_id)
        try:
            request = self.ctx.store.deny_request(
                request.id, principal.subject, reason, self.ctx.clock(), origin.detail()
            )
        except Conflict as exc:
            raise refusals.Conflict(
                "conflict", str(exc), "dbaccess requests lists what you can act on"
            ) from None
        self.ctx.notifier.send(
            "request.denied",
            f"{principal.handle} denied {request.subject}'s request for {request.role} on "
            f"{request.target}: {reason}",
            denied_by=principal.subject,
            deny_reason=reason,
            **_fields(request, self.ctx),
        )
        return self.info(principal, request)

    def expire(self) -> int:
        expired = self.ctx.store.expire_requests(self.ctx.clock())
        for request in expired:
            self.ctx.notifier.send(
                "request.expired",
                f"{request.subject}'s request for {request.role} on {request.target} expired",
                **_fields(request, self.ctx),
            )
        return len(expired)

    def info(self, principal: Principal, request: ApprovalRequest) -> RequestInfo:
        return RequestInfo(
            id=request.id,
            subject=request.subject,
            email=request.email,
            target=request.target,
            role=request.role,
            duration_seconds=request.duration_seconds,
            reason=request.reason,
            ticket=request.ticket,
            rule=request.rule,
            tier=request.tier,
            state=request.state,  # type: ignore[arg-type]
            approvals_required=request.approvals_required,
            approver_groups=request.approver_groups,
            approvals=[ApprovalInfo(by=a["by"], at=a["at"]) for a in request.approvals],
            denied_by=request.denied_by,
            deny_reason=request.deny_reason,
            created_at=request.created_at,
            expires_at=request.expires_at,
            can_approve=request.state == "pending" and self.may_decide(principal, request),
        )

    def _visible(
        self, principal: Principal, request_id: str, min_prefix: int = MIN_PREFIX
    ) -> ApprovalRequest:
        """The request ``request_id`` (a whole id or a unique prefix) names among those
        the caller may see: their own, and those of their approver groups."""
        self.expire()
        store = self.ctx.store

        def seen(request: ApprovalRequest | None) -> bool:
            return request is not None and (
                request.subject == principal.subject
                or bool(principal.groups & set(request.approver_groups))
            )

        def candidates(prefix: str) -> list[str]:
            # Visibility is checked here, before anything is listed: an ambiguous prefix
            # names only requests the caller could see anyway.
            ids = store.ids_starting_with(approval_requests, prefix, limit=50)
            return [i for i in ids if seen(store.get_request(i))][:6]

        found = resolve_id(
            request_id,
            candidates,
            noun="request",
            not_found=refusals.NotFound(
                "not_found",
                f"no approval request {request_id} you can see",
                "dbaccess requests lists what you can act on",
            ),
            listing="dbaccess requests (or --mine) lists their ids",
            min_prefix=min_prefix,
        )
        request = store.get_request(found)
        assert request is not None
        return request

    def _decidable(self, principal: Principal, request_id: str) -> ApprovalRequest:
        # _visible admits only the requester and the approver groups' members.
        request = self._visible(principal, request_id, DECISION_PREFIX)
        if principal.same_person(
            request.subject, request.claimed_email or request.email
        ):  # refusals are evidence too
            self.ctx.store.record(
                self.ctx.clock(),
                "request.decision_refused",
                principal.subject,
                {
                    "request_id": request.id,
                    "requester": request.subject,
                    "target": request.target,
                    "role": request.role,
                    "refusal": "own request",
                },
            )
            raise refusals.Denied(
                "self_approval",
                "nobody approves or denies their own request",
                f"ask a member of {', '.join(request.approver_groups)}",
            )
        return request


def _link(ctx: BrokerContext, request: ApprovalRequest) -> str | None:
    """The request's web page, when the broker serves the web pages ([web])."""
    web = ctx.settings.web
    return web.request_link(request.id) if web is not None else None


def _fields(request: ApprovalRequest, ctx: BrokerContext) -> dict[str, object]:
    return {
        "link": _link(ctx, request),
        "request_id": request.id,
        "user": request.subject,
        "email": request.email,
        "target": request.target,
        "role": request.role,
        "duration_seconds": request.duration_seconds,
        "reason": request.reason,
        "ticket": request.ticket,
        "rule": request.rule,
        "tier": request.tier,
        "state": request.state,
        "approvals": [a["by"] for a in request.approvals],
        "approvals_required": request.approvals_required,
        "expires_at": request.expires_at,
    }
