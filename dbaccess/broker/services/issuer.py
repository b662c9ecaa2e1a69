"""Issuing a session: lease, user, activation, in the crash-safe order every kind of
session shares (an everyday one, one an approval request grants, break-glass).

Write the lease (state ``creating``, within the caps) -> create the user -> mark it
``active``. A failure after the lease leaves it for the reaper, which drops whatever user
was made; a password leaves only once its lease and audit records are on disk.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any, NoReturn

from dbaccess.broker.engines import EngineError, NewUser
from dbaccess.broker.engines.base import make_password, make_username
from dbaccess.broker.failpoints import failpoint
from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.broker.services.target_guard import Revoke, TargetGuard, guarded_issue
from dbaccess.broker.services.views import session_fields
from dbaccess.broker.settings import RoleTemplate, Settings, TargetSection
from dbaccess.broker.store import ApprovalRequest, CapReached, Caps, Conflict, StoreUnavailable
from dbaccess.gateway.credentials import bind_verifier, new_session_secret, upstream_password
from dbaccess.wire import SessionGranted

log = logging.getLogger("dbaccess.broker")


def ceil_second(moment: datetime) -> datetime:
    """Round up to a whole second. Rounding down could put a 1-second session's expiry in
    the past by the time the database checks it (MariaDB keeps whole seconds only)."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def target_role(
    settings: Settings, target_name: str, role: str
) -> tuple[TargetSection, RoleTemplate]:
    """The target and role a request names, or NotFound (before any policy answer)."""
    target = settings.targets.get(target_name)
    if target is None:
        raise refusals.NotFound(
            "unknown_target",
            f"there is no target '{target_name}'",
            "dbaccess targets lists the targets you may use",
        )
    template = target.roles.get(role)
    if template is None:
        raise refusals.NotFound(
            "unknown_role",
            f"target '{target_name}' has no role '{role}'",
            f"roles on {target_name}: {', '.join(sorted(target.roles))}",
        )
    return target, template


class Issuer:
    def __init__(self, ctx: BrokerContext, revoke: Revoke) -> None:
        self.ctx = ctx
        self.revoke = revoke  # what a session ready too late goes through (target_guard)
        self.guard = TargetGuard(ctx)  # fail fast on a target known down (target_guard.py)

    @guarded_issue  # target_guard.py: 503 while the target is known down; late: revoked
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
        on_call: dict[str, Any] | None = None,
    ) -> SessionGranted:
        """Lease, user, activation — the crash-safe order every kind of session shares.
        ``incident`` makes it a break-glass session (statements logged, review opened)."""
        target, template = target_role(self.ctx.settings, target_name, role)
        engine = self.ctx.engines[target_name]
        username = make_username(
            target.username_prefix, principal.handle, engine.max_username_length
        )
        now = self.ctx.clock()
        expires_at = ceil_second(now + duration)
        breakglass = incident is not None
        gateway = self.ctx.settings.gateway if target.access == "gateway" else None
        gateway_key = secret = verifier = ca = None
        if gateway is not None:  # before the lease: a missing key or CA refuses, nothing made
            gateway_key = gateway.key.ensure()
            ca = gateway.client_ca()
            secret, verifier = new_session_secret()
        try:
            lease = self.ctx.store.open_lease(
                now=now,
                subject=principal.subject,
                email=principal.verified_email,
                claimed_email=principal.email,
                target=target_name,
                role=role,
                engine=target.engine,
                db_user=username,
                rule=rule,
                reason=reason,
                ticket=ticket,
                expires_at=expires_at,
                source=origin.source,
                user_agent=origin.user_agent,
                kind="breakglass" if breakglass else "session",
                incident=incident,
                drill=drill,
                request=request,
                caps=self._caps(target_name, breakglass),
                on_call=on_call,
                access=target.access if gateway is not None else None,
                gateway_verifier=(
                    bind_verifier(gateway_key, verifier, username, target_name, role, expires_at)
                    if verifier is not None and gateway_key is not None
                    else None
                ),
            )
        except CapReached as exc:
            self._refuse_over_cap(
                principal, exc, target_name, role, breakglass, reason, incident, origin
            )
        except Conflict as exc:
            raise refusals.Conflict("request_used", str(exc), "open a new request") from None
        failpoint("issue.after_lease")
        # Through the gateway the user's password is derived from the lease, never handed out.
        password = (
            make_password() if gateway_key is None else upstream_password(gateway_key, lease.id)
        )
        try:
            engine.create_user(
                NewUser(username, password, template, lease.expires_at, log_statements=breakglass)
            )
        except EngineError as exc:
            # The user may exist half-made: hand the lease to the reaper to clean up.
            self.ctx.store.begin_revoke(lease.id, self.ctx.clock(), "create_failed")
            self.ctx.metrics.issue_failures.labels(target_name).inc()
            log.warning("creating %s (lease %s) failed: %s", username, lease.id, exc)
            raise refusals.TargetFailed(
                "database_error",
                str(exc),
                "the target database refused the request; try again later",
            ) from None
        failpoint("issue.after_create")
        try:
            lease = self.ctx.store.activate(lease, self.ctx.clock())
        except StoreUnavailable:  # outcome unknown (a failed fsync may still have landed):
            with suppress(EngineError):  # the password goes to nobody, so neither does the user
                engine.revoke_user(username)
            raise
        if lease.state != "active":  # the reconciler gave up on it (creation_timeout)
            raise refusals.TargetTimeout(
                "creation_timeout",
                f"creating {username} took too long; the broker has revoked it",
                "try again; if it keeps happening, the target database is overloaded",
            )
        self.ctx.metrics.issued.labels(target_name, role).inc()
        if gateway is not None and secret is not None and ca is not None:
            host, port = gateway.client_address
            return SessionGranted(
                **session_fields(lease),
                host=host,
                port=port,
                database=target.database,
                sslmode="verify-full",
                password=secret,  # type: ignore[arg-type]
                access="gateway",
                ca_certificate=ca,
            )
        return SessionGranted(
            **session_fields(lease),
            host=target.host,
            port=target.port,
            database=target.database,
            sslmode=target.sslmode,
            password=password,  # type: ignore[arg-type]
        )

    def _caps(self, target_name: str, breakglass: bool) -> Caps:
        settings = self.ctx.settings
        weights = {n: r.connection_limit for n, r in settings.targets[target_name].roles.items()}

        def value(key: str) -> int:
            return settings.limit(target_name, key)[0]

        if breakglass:
            return Caps(
                True,
                weights,
                person_sessions=value("breakglass_sessions_per_person"),
                target_connections=value("breakglass_connections_per_target"),
            )
        return Caps(
            False,
            weights,
            person_sessions=value("sessions_per_person"),
            person_connections=value("connections_per_person"),
            target_sessions=value("sessions_per_target"),
            target_connections=value("connections_per_target"),
        )

    def _refuse_over_cap(
        self,
        principal: Principal,
        exc: CapReached,
        target: str,
        role: str,
        breakglass: bool,
        reason: str | None,
        incident: str | None,
        origin: Origin,
    ) -> NoReturn:
        """OverLimit, naming the cap and its setting; the refusal is audited like any denial."""
        key = {
            "person_sessions": "sessions_per_person",
            "person_connections": "connections_per_person",
            "target_sessions": "sessions_per_target",
            "target_connections": "connections_per_target",
        }[exc.cap]
        if breakglass:
            key = {
                "sessions_per_person": "breakglass_sessions_per_person",
                "connections_per_target": "breakglass_connections_per_target",
            }[key]
        _, setting = self.ctx.settings.limit(target, key)
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
                "try again when sessions have ended; an administrator can raise "
                + setting
                + (" (or, in an incident, use dbaccess breakglass)" if not breakglass else "")
            )
        self.ctx.store.record(
            self.ctx.clock(),
            "breakglass.denied" if breakglass else "session.denied",
            principal.subject,
            {
                "email": principal.verified_email,
                "target": target,
                "role": role,
                "reason": reason,
                **({"incident": incident} if breakglass else {}),
                "explanation": message,
                "cap": setting,
                **origin.detail(),
            },
        )
        self.ctx.metrics.denied.labels(target).inc()
        raise refusals.OverLimit("cap_reached", message, hint)
