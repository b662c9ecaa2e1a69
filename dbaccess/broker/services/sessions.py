"""Issuing and revoking sessions: policy, lease, engine and audit, in a crash-safe order.

Issue: decide -> write the lease (state ``creating``) -> create the user -> mark ``active``.
Revoke: mark ``revoking`` -> lock, terminate, drop -> mark ``revoked``. A failure at any
step leaves a live lease that the reaper retries with backoff until the user is gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from dbaccess.broker.api.errors import ApiError
from dbaccess.broker.engines import Engine, EngineError, EngineRefused, NewUser
from dbaccess.broker.engines.base import make_password, make_username
from dbaccess.broker.failpoints import failpoint
from dbaccess.broker.identity import Principal
from dbaccess.broker.metrics import Metrics
from dbaccess.broker.notify import Notifier
from dbaccess.broker.policy import AccessRequest, Decision, decide, entitlements
from dbaccess.broker.services.approvals import Approvals
from dbaccess.broker.services.breakglass import Breakglass
from dbaccess.broker.services.ids import resolve_id
from dbaccess.broker.settings import RoleTemplate, Settings, TargetSection
from dbaccess.broker.store import (
    ApprovalRequest,
    CapReached,
    Caps,
    Conflict,
    Lease,
    Store,
    StoreUnavailable,
    approval_requests,
    due_cause,
    leases,
)
from dbaccess.durations import format_duration
from dbaccess.wire import (
    SessionCreate,
    SessionGranted,
    SessionInfo,
    SessionRenew,
    SessionRenewed,
)

log = logging.getLogger("dbaccess.broker")

MAX_BACKOFF = timedelta(minutes=5)
REVOKE_CHUNK = 50  # users per revoke_users call: see postgres_bootstrap._revoke_users
CLAIM_TTL = timedelta(seconds=15)  # longer than one revocation takes (it gives up at ~5 s);
# a crashed replica's claims lapse after this, so a restarted broker resumes soon


# What one revocation attempt came to: the lease, the error (None: the user is gone) and,
# after an error, when to try again.
Outcome = tuple[Lease, str | None, datetime | None]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Origin:
    """Where an API call came from, for the audit trail."""

    source: str | None = None
    user_agent: str | None = None

    def detail(self) -> dict[str, str | None]:
        return {"source": self.source, "user_agent": self.user_agent}


def ceil_second(moment: datetime) -> datetime:
    """Round up to a whole second. Rounding down could put a 1-second session's expiry in
    the past by the time the database checks it (MariaDB keeps whole seconds only)."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


class SessionService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        engines: Mapping[str, Engine],
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engines = dict(engines)
        self.clock = clock
        self.metrics = metrics or Metrics()
        # Names this process in lease claims, so replicas sharing a store never revoke
        # the same lease at once.
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.notifier = notifier or Notifier(settings.notify, store, owner=self.replica)
        self.approvals = Approvals(self)
        self.breakglass = Breakglass(self)
        # Revocation workers, per target (see start_drops).
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._workers_lock = threading.Lock()

    def create(
        self, principal: Principal, body: SessionCreate, origin: Origin | None = None
    ) -> SessionGranted | ApprovalRequest:
        """A session now, or — when the matching rule needs approvals — a pending approval
        request (``body.request_id`` then redeems the approved request)."""
        origin = origin or Origin()
        self._target_role(body.target, body.role)  # 404s come before any policy answer
        if not body.request_id:
            # Asked again while a request is open: that one, not a second one (its policy
            # is checked again when it is used). Before the reason check, so a retry after
            # Ctrl-C need not type the reason again.
            reused = self.approvals.reusable(principal, body)
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
        decision = decide(
            principal,
            AccessRequest(body.target, body.role, requested, reason, ticket),
            self.settings.rules,
        )
        now = self.clock()
        if decision.allowed and decision.approvals_required and not (reason or "").strip():
            decision = Decision(
                False,
                f"rule '{decision.rule}' needs approval, and approvers need a reason (--reason)",
                decision.rule,
                missing="reason",
            )
        if not decision.allowed or decision.duration is None:
            self.store.record(
                now,
                "session.denied",
                principal.subject,
                {
                    "email": principal.email,
                    "target": body.target,
                    "role": body.role,
                    "reason": reason,
                    "explanation": decision.explanation,
                    "rule": decision.rule,
                    **origin.detail(),
                },
            )
            self.metrics.denied.labels(body.target).inc()
            if decision.missing == "reason":
                raise ApiError(403, "reason_required", decision.explanation, "add --reason TEXT")
            if decision.max_duration is not None:
                most = format_duration(decision.max_duration)
                raise ApiError(
                    403,
                    "denied",
                    decision.explanation,
                    f"ask for at most {most}: dbaccess connect {body.target} --role "
                    f"{body.role} --duration {most}",
                )
            if decision.rule is None:
                raise ApiError(403, "denied", *self._what_you_may(principal, body.target))
            raise ApiError(403, "denied", decision.explanation)
        if decision.approvals_required and request is None:
            return self.approvals.open(principal, body, decision, origin)
        return self.issue(
            principal,
            target_name=body.target,
            role=body.role,
            duration=decision.duration,
            rule=decision.rule,
            reason=reason,
            ticket=ticket,
            origin=origin,
            request=request,
        )

    def _what_you_may(self, principal: Principal, target: str) -> tuple[str, str]:
        """The message and hint of a request no rule grants: what the caller may ask for
        instead — only their own entitlements, nothing about anyone else's."""
        current = self.settings
        mine = entitlements(
            principal, current.rules, {n: list(t.roles) for n, t in current.targets.items()}
        )
        here = [role for name, role, _ in mine if name == target]
        if here:
            return (
                f"no rule grants you that role on '{target}'; there you may request: "
                f"{', '.join(here)}",
                f"dbaccess connect {target} --role {here[0]}",
            )
        elsewhere = sorted({name for name, _, _ in mine})
        if elsewhere:
            return (
                f"no rule grants you any role on '{target}'; you may use: "
                f"{', '.join(elsewhere)}",
                "dbaccess targets lists the targets and roles you may request",
            )
        return (
            f"no rule of this broker grants you access to '{target}' or any other target",
            "ask an administrator to add you to a group the broker's rules name",
        )

    def _target_role(self, target_name: str, role: str) -> tuple[TargetSection, RoleTemplate]:
        target = self.settings.targets.get(target_name)
        if target is None:
            raise ApiError(
                404,
                "unknown_target",
                f"there is no target '{target_name}'",
                "dbaccess targets lists the targets you may use",
            )
        template = target.roles.get(role)
        if template is None:
            raise ApiError(
                404,
                "unknown_role",
                f"target '{target_name}' has no role '{role}'",
                f"roles on {target_name}: {', '.join(sorted(target.roles))}",
            )
        return target, template

    def _approved_request(self, principal: Principal, body: SessionCreate) -> ApprovalRequest:
        assert body.request_id is not None
        found = resolve_id(
            body.request_id,
            lambda prefix: self.store.ids_starting_with(
                approval_requests, prefix, approval_requests.c.subject == principal.subject
            ),
            noun="request",
            not_found=ApiError(
                404,
                "not_found",
                f"no approval request {body.request_id} of yours",
                "dbaccess requests --mine lists your requests",
            ),
            listing="dbaccess requests --mine lists them",
        )
        request = self.store.get_request(found)
        assert request is not None
        if (request.target, request.role) != (body.target, body.role):
            raise ApiError(
                409,
                "request_mismatch",
                f"request {request.id} is for role '{request.role}' on '{request.target}'",
                f"dbaccess connect {request.target} --role {request.role} --request {request.id}",
            )
        if request.state != "approved" or request.expires_at <= self.clock():
            state = "expired" if request.expires_at <= self.clock() else request.state
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
            raise ApiError(409, f"request_{state}", message, hint)
        return request

    def issue(
        self,
        principal: Principal,
        *,
        target_name: str,
        role: str,
        duration: timedelta,
        rule: str | None,
        reason: str | None,
        ticket: str | None,
        origin: Origin,
        request: ApprovalRequest | None = None,
        incident: str | None = None,
        drill: bool = False,
    ) -> SessionGranted:
        """Lease, user, activation — the crash-safe order every kind of session shares.
        ``incident`` makes it a break-glass session (statements logged, review opened)."""
        target, template = self._target_role(target_name, role)
        engine = self.engines[target_name]
        username = make_username(
            target.username_prefix, principal.handle, engine.max_username_length
        )
        now = self.clock()
        breakglass = incident is not None
        try:
            lease = self.store.open_lease(
                now=now,
                subject=principal.subject,
                email=principal.email,
                target=target_name,
                role=role,
                engine=target.engine,
                db_user=username,
                rule=rule,
                reason=reason,
                ticket=ticket,
                expires_at=ceil_second(now + duration),
                source=origin.source,
                user_agent=origin.user_agent,
                kind="breakglass" if breakglass else "session",
                incident=incident,
                drill=drill,
                request=request,
                caps=self._caps(target_name, breakglass),
            )
        except CapReached as exc:
            self._refuse_over_cap(principal, exc, target_name, role, breakglass, reason,
                                  incident, origin)
        except Conflict as exc:
            raise ApiError(409, "request_used", str(exc), "open a new request") from None
        failpoint("issue.after_lease")
        password = make_password()
        try:
            engine.create_user(
                NewUser(username, password, template, lease.expires_at, log_statements=breakglass)
            )
        except EngineError as exc:
            # The user may exist half-made: hand the lease to the reaper to clean up.
            self.store.begin_revoke(lease.id, self.clock(), "create_failed")
            self.metrics.issue_failures.labels(target_name).inc()
            log.warning("creating %s (lease %s) failed: %s", username, lease.id, exc)
            raise ApiError(
                502,
                "database_error",
                str(exc),
                "the target database refused the request; try again later",
            ) from None
        failpoint("issue.after_create")
        try:
            lease = self.store.activate(lease, self.clock())
        except StoreUnavailable:  # outcome unknown (a failed fsync may still have landed):
            with suppress(EngineError):  # the password goes to nobody, so neither does the user
                engine.revoke_user(username)
            raise
        if lease.state != "active":  # the reconciler gave up on it (creation_timeout)
            raise ApiError(
                504,
                "creation_timeout",
                f"creating {username} took too long; the broker has revoked it",
                "try again; if it keeps happening, the target database is overloaded",
            )
        self.metrics.issued.labels(target_name, role).inc()
        return SessionGranted(
            **_info_fields(lease),
            host=target.host,
            port=target.port,
            database=target.database,
            sslmode=target.sslmode,
            password=password,  # type: ignore[arg-type]
        )

    def _caps(self, target_name: str, breakglass: bool) -> Caps:
        settings = self.settings
        weights = {n: r.connection_limit for n, r in settings.targets[target_name].roles.items()}

        def value(key: str) -> int:
            return settings.limit(target_name, key)[0]

        if breakglass:
            return Caps(True, weights,
                        person_sessions=value("breakglass_sessions_per_person"),
                        target_connections=value("breakglass_connections_per_target"))
        return Caps(False, weights,
                    person_sessions=value("sessions_per_person"),
                    person_connections=value("connections_per_person"),
                    target_sessions=value("sessions_per_target"),
                    target_connections=value("connections_per_target"))

    def _refuse_over_cap(
        self, principal: Principal, exc: CapReached, target: str, role: str, breakglass: bool,
        reason: str | None, incident: str | None, origin: Origin,
    ) -> NoReturn:
        """429 naming the cap and its setting; the refusal is audited like any denial."""
        key = {
            "person_sessions": "sessions_per_person",
            "person_connections": "connections_per_person",
            "target_sessions": "sessions_per_target",
            "target_connections": "connections_per_target",
        }[exc.cap]
        if breakglass:
            key = {"sessions_per_person": "breakglass_sessions_per_person",
                   "connections_per_target": "breakglass_connections_per_target"}[key]
        _, setting = self.settings.limit(target, key)
        kind = "break-glass " if breakglass else ""
        unit = "sessions" if exc.cap.endswith("sessions") else "connections"
        if exc.cap.startswith("person"):
            message = (
                f"one person may hold at most {exc.limit} live {kind}{unit} on '{target}' "
                f"({setting}); this session would make {exc.would_be}"
            )
            hint = "end one first: dbaccess sessions lists yours, dbaccess revoke ID ends one"
        else:
            message = (
                f"'{target}' has no {kind}{unit} to spare: at most {exc.limit} for all live "
                f"{kind}sessions ({setting}); this session would make {exc.would_be}"
            )
            hint = (
                "try again when sessions have ended; an administrator can raise " + setting
                + (" (or, in an incident, use dbaccess breakglass)" if not breakglass else "")
            )
        self.store.record(
            self.clock(),
            "breakglass.denied" if breakglass else "session.denied",
            principal.subject,
            {
                "email": principal.email,
                "target": target,
                "role": role,
                "reason": reason,
                **({"incident": incident} if breakglass else {}),
                "explanation": message,
                "cap": setting,
                **origin.detail(),
            },
        )
        self.metrics.denied.labels(target).inc()
        raise ApiError(429, "cap_reached", message, hint)

    def list_for(self, principal: Principal) -> list[SessionInfo]:
        return [_info(lease) for lease in self.store.sessions_of(principal.subject)]

    def _own(self, principal: Principal, lease_id: str) -> Lease:
        """The caller's session that ``lease_id`` (a whole id or a unique prefix) names."""
        found = resolve_id(
            lease_id,
            lambda prefix: self.store.ids_starting_with(
                leases, prefix, leases.c.subject == principal.subject
            ),
            noun="session",
            not_found=ApiError(
                404,
                "not_found",
                f"no session {lease_id} of yours",
                "dbaccess sessions lists your sessions",
            ),
            listing="dbaccess sessions lists them",
        )
        lease = self.store.get(found)
        assert lease is not None
        return lease

    def renew_for(
        self, principal: Principal, lease_id: str, body: SessionRenew, origin: Origin | None = None
    ) -> SessionRenewed:
        """Move the expiry to now + duration, as long as the whole session stays within
        the maximum of a rule that (still) grants it. Never earlier than it is unless
        ``body.shorten``: a renewal meant to keep a session alive (a script running
        ``renew --duration 30m`` every 10 minutes) must not cut it short; so an earlier
        time leaves the session as it is and says so (``changed`` False)."""
        lease = self._own(principal, lease_id)
        lease_id = lease.id
        now = self.clock()
        if lease.state != "active" or lease.expires_at <= now:
            raise ApiError(
                409,
                "not_active",
                f"session {lease_id} is {lease.state}",
                "start a new one with dbaccess connect",
            )
        wanted = timedelta(seconds=body.duration_seconds) if body.duration_seconds else None
        extension = wanted or (lease.expires_at - lease.created_at)
        expires_at = ceil_second(now + extension)
        if expires_at <= lease.expires_at and not body.shorten:
            return SessionRenewed(
                **_info_fields(lease), changed=False, previous_expires_at=lease.expires_at
            )
        total = expires_at - lease.created_at
        lifetime = self.settings.targets[lease.target].max_lifetime

        def deny(code: str, explanation: str, rule: str | None, by: str) -> None:
            self.store.record(
                now,
                "session.renew_denied",
                principal.subject,
                {
                    "email": principal.email,
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
            explanation = (f"target '{lease.target}' allows {format_duration(lifetime)} "
                           "from its start (max_lifetime), however often it is renewed")
            deny("max_lifetime", explanation, None, "broker")
            raise ApiError(
                403,
                "max_lifetime",
                f"renewing to {expires_at:%H:%M:%S} UTC would make the session "
                f"{format_duration(total)} long: {explanation}",
                f"start a new one: dbaccess connect {lease.target} --role {lease.role}",
            )
        basis = self._renewal_basis(principal, lease, total)
        if isinstance(basis, _RenewRefusal):
            deny(basis.code, basis.explanation, basis.rule, "broker")
            raise ApiError(
                403,
                basis.code,
                f"renewing to {expires_at:%H:%M:%S} UTC would make the session "
                f"{format_duration(total)} long: {basis.explanation}",
                self._renew_hint(lease, basis.most, now),
            )
        try:
            self.engines[lease.target].renew_user(lease.db_user, expires_at)
        except EngineRefused as exc:
            # the database's own bound (creation + max_lifetime) held where the broker's
            # did not, e.g. its clock runs ahead of the broker's: still the caller's limit,
            # and as much a refusal to account for as the broker's own
            deny("max_lifetime", str(exc), basis.rule, "database")
            raise ApiError(
                403,
                "max_lifetime",
                f"session {lease_id} cannot last that long: {exc}",
                f"start a new one: dbaccess connect {lease.target} --role {lease.role}",
            ) from None
        except EngineError as exc:
            raise ApiError(502, "database_error", str(exc)) from None
        renewed = self.store.renew(
            lease_id, now, expires_at, principal.subject,
            {**basis.detail(), **(origin or Origin()).detail()},
        )
        if lease.kind == "breakglass":  # loud, like the opening
            label = "DRILL: break-glass" if lease.drill else "BREAK-GLASS"
            self.notifier.send(
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
            **_info_fields(renewed), changed=True, previous_expires_at=lease.expires_at
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
            self.settings.rules,
        )
        if not decision.allowed:
            return _RenewRefusal(decision.explanation, decision.rule, decision.max_duration)
        if not decision.approvals_required:
            return _RenewBasis(decision.rule)
        request = self.store.get_request(lease.request_id) if lease.request_id else None
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
        policy = self.settings.breakglass
        if policy is None or policy.targets.get(lease.target) != lease.role:
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

    def revoke_for(
        self, principal: Principal, lease_id: str, origin: Origin | None = None
    ) -> SessionInfo:
        lease_id = self._own(principal, lease_id).id
        self.revoke_batch(
            [(lease_id, "user")], actor=principal.subject, origin=(origin or Origin()).detail()
        )
        current = self.store.get(lease_id)
        assert current is not None
        return _info(current)

    def reap(
        self, limit: int = 100, *, target: str | None = None, not_targets: Iterable[str] = ()
    ) -> int:
        """Revoke a batch of due leases (expired, interrupted, or a retry whose time has
        come); returns how many were due, so a storm is drained batch after batch. The
        reaper calls it per target (``target``), and for leases of targets no longer
        configured (``not_targets``: the configured ones)."""
        batch = self.due_revocations(limit, target=target, not_targets=not_targets)
        self.revoke_batch(batch)
        return len(batch)

    def due_revocations(
        self, limit: int, *, target: str | None = None, not_targets: Iterable[str] = ()
    ) -> list[tuple[str, str]]:
        """(lease id, cause) of up to ``limit`` leases due for revocation now."""
        now = self.clock()
        stale = now - self.settings.broker.creation_timeout
        return [
            (lease.id, due_cause(lease, now))
            for lease in self.store.due(now, stale, limit, target=target,
                                        not_targets=not_targets)
        ]

    def revoke_batch(
        self,
        wanted: list[tuple[str, str]],
        actor: str | None = None,
        origin: dict[str, str | None] | None = None,
    ) -> int:
        """Mark and claim the leases (one store transaction), drop their users a few at a
        time in parallel, then record every outcome (one more transaction). Leases another
        replica holds are left to it. Returns how many users were dropped."""
        claimed = self.claim(wanted, actor, origin)
        return self.settle([outcome for drop in self.start_drops(claimed)
                            for outcome in drop.result()])

    def claim_due(self, limit: int, *, target: str | None = None) -> list[Lease]:
        """Claim up to ``limit`` due leases of ``target`` in one store transaction."""
        now = self.clock()
        claimed = self.store.claim_due(
            now, now - self.settings.broker.creation_timeout, limit, self.replica, CLAIM_TTL,
            target=target,
        )
        if claimed:
            failpoint("revoke.after_mark")
        return claimed

    def claim(
        self,
        wanted: list[tuple[str, str]],
        actor: str | None = None,
        origin: dict[str, str | None] | None = None,
    ) -> list[Lease]:
        """Mark ``wanted`` revoking and claim them for this replica (one transaction)."""
        if not wanted:
            return []
        claimed = self.store.claim_for_revocation(
            wanted, self.clock(), self.replica, CLAIM_TTL, actor, origin
        )
        if claimed:
            failpoint("revoke.after_mark")
        return claimed

    def start_drops(
        self, claimed: list[Lease], *, skip_troubled: bool = False
    ) -> list[Future[list[Outcome]]]:
        """Drop the claimed leases' users on their targets' own workers, a chunk of users
        per database call (``revoke_users``), the chunks spread over the workers: a target
        that hangs holds only its own workers, never another target's revocations. With
        ``skip_troubled`` (the reaper), a chunk whose target stopped answering meanwhile
        is not tried: the rest of a batch would each wait for its timeout."""
        by_target: dict[str, list[Lease]] = {}
        for lease in claimed:
            by_target.setdefault(lease.target, []).append(lease)
        running: list[Future[list[Outcome]]] = []
        for target, group in by_target.items():
            workers = self.settings.broker.revoke_workers
            size = max(1, min(REVOKE_CHUNK, -(-len(group) // workers)))
            running += [
                self._workers_of(target).submit(self._drop_users, group[i:i + size],
                                                skip_troubled)
                for i in range(0, len(group), size)
            ]
        return running

    def _workers_of(self, target: str) -> ThreadPoolExecutor:
        with self._workers_lock:
            workers = self._workers.get(target)
            if workers is None:
                workers = self._workers[target] = ThreadPoolExecutor(
                    self.settings.broker.revoke_workers,
                    thread_name_prefix=f"dbaccess-revoke-{target}",
                )
            return workers

    def settle(self, outcomes: list[Outcome]) -> int:
        """Record the outcomes (one transaction) and count them; returns how many users
        were dropped."""
        if not outcomes:
            return 0
        failpoint("revoke.after_drop")
        done = self.clock()
        self.store.settle_revocations(outcomes, done, self.replica)
        dropped = 0
        for lease, error, _ in outcomes:
            if error is not None:
                self.metrics.revoke_failures.labels(lease.target).inc()
                log.warning("revoking %s (lease %s) failed: %s", lease.db_user, lease.id, error)
                continue
            dropped += 1
            cause = lease.revoke_cause or "unknown"
            self.metrics.revoked.labels(lease.target, cause).inc()
            if cause == "expired":
                lag = (done - lease.expires_at).total_seconds()
                self.metrics.revocation_lag.labels(lease.target).observe(max(lag, 0.0))
        return dropped

    def _drop_users(self, chunk: list[Lease], skip_troubled: bool = False) -> list[Outcome]:
        """Drop the users of ``chunk`` (leases of one target): an outcome per lease."""
        target = chunk[0].target
        errors: dict[str, str | None]
        engine = self.engines.get(target)
        if engine is None:
            errors = dict.fromkeys((lease.db_user for lease in chunk),
                                   f"target '{target}' is no longer configured")
        elif skip_troubled and engine.troubled:
            errors = dict.fromkeys((lease.db_user for lease in chunk),
                                   f"cannot connect to target '{target}' (it does not "
                                   "answer; tried again as soon as it does)")
        else:
            try:
                errors = engine.revoke_users([lease.db_user for lease in chunk])
            except EngineError as exc:
                errors = dict.fromkeys((lease.db_user for lease in chunk), str(exc))
        now = self.clock()
        outcomes: list[Outcome] = []
        for lease in chunk:
            error = errors.get(lease.db_user, f"no outcome for {lease.db_user}")
            # A target that does not answer is retried as soon as it answers again (the
            # reaper pings it, then makes its failed leases due): this backoff is for
            # errors.
            retry_at = None if error is None else now + min(
                timedelta(seconds=2 ** min(lease.attempts, 10)), MAX_BACKOFF)
            outcomes.append((lease, error, retry_at))
        return outcomes

    def reconcile(self, target: str | None = None) -> int:
        """Revoke managed users that have no live lease (e.g. made by a crashed broker),
        on ``target`` or on every target.

        Users are listed before leases are read: a user is created only after its lease
        is written, so any listed user whose lease is live shows up in the second read.
        """
        revoked = 0
        for name, engine in list(self.engines.items()):
            if target is not None and name != target:
                continue
            try:
                present = engine.list_managed_users()
            except EngineError as exc:
                log.warning("reconciling target %s failed: %s", name, exc)
                continue
            live = self.store.live_users(name)
            for username in sorted(set(present) - live):
                try:
                    engine.revoke_user(username)
                except EngineError as exc:
                    log.warning("reconciler could not drop %s on %s: %s", username, name, exc)
                    continue
                self.store.record(
                    self.clock(),
                    "reconcile.revoked",
                    None,
                    {
                        "target": name,
                        "db_user": username,
                        "cause": "managed user without a live lease",
                    },
                )
                revoked += 1
        return revoked


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


def _info(lease: Lease) -> SessionInfo:
    return SessionInfo(**_info_fields(lease))


def _info_fields(lease: Lease) -> dict[str, Any]:
    return dict(
        id=lease.id,
        target=lease.target,
        role=lease.role,
        engine=lease.engine,
        db_user=lease.db_user,
        state=lease.state,
        created_at=lease.created_at,
        expires_at=lease.expires_at,
        revoked_at=lease.revoked_at,
        reason=lease.reason,
        rule=lease.rule,
        kind=lease.kind,
        incident=lease.incident,
        drill=lease.drill,
    )
