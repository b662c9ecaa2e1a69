"""Break-glass: emergency access that is fast, loud and fully recorded.

No approval wait. Instead: only the groups of the ``[breakglass]`` policy, an incident id
that matches its pattern, a reason, a short maximum duration and the policy's elevated
role; a webhook fires at once; the database logs every statement of the user; and the
session stays marked for a post-incident review that someone else must close. A drill
runs the same path and is recorded and announced as a drill.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING

from dbaccess.broker.api_errors import ApiError
from dbaccess.broker.identity import Principal
from dbaccess.broker.settings import BreakglassSection
from dbaccess.broker.store import Conflict, Lease
from dbaccess.durations import format_duration
from dbaccess.models import BreakglassCreate, BreakglassPolicy, ReviewInfo, SessionGranted

if TYPE_CHECKING:
    from dbaccess.broker.sessions import Origin, SessionService


class Breakglass:
    def __init__(self, service: SessionService) -> None:
        self.service = service

    def _policy(self) -> BreakglassSection:
        policy = self.service.settings.breakglass
        if policy is None:
            raise ApiError(
                404,
                "breakglass_disabled",
                "this broker has no break-glass policy",
                "an administrator can add a [breakglass] section to the broker's config",
            )
        return policy

    def policy_for(self, principal: Principal) -> BreakglassPolicy:
        policy = self.service.settings.breakglass
        if policy is None or not principal.groups & set(policy.groups):
            return BreakglassPolicy(allowed=False)
        return BreakglassPolicy(
            allowed=True,
            targets=dict(policy.targets),
            incident_pattern=policy.incident_pattern,
            max_duration_seconds=int(policy.max_duration.total_seconds()),
        )

    def open(self, principal: Principal, body: BreakglassCreate, origin: Origin) -> SessionGranted:
        policy = self._policy()
        refusal = self._refusal(principal, body, policy)
        target = body.target or (next(iter(policy.targets)) if len(policy.targets) == 1 else None)
        if refusal is None and target is None:
            choices = ", ".join(sorted(policy.targets))
            raise ApiError(
                409,
                "target_required",
                f"break-glass covers several targets: {choices}",
                "name one: dbaccess breakglass TARGET --incident ...",
            )
        if refusal is None and target not in policy.targets:
            refusal = (
                f"break-glass does not cover '{target}' "
                f"(it covers {', '.join(sorted(policy.targets))})"
            )
        if refusal is not None:
            self.service.store.record(
                self.service.clock(),
                "breakglass.denied",
                principal.subject,
                {
                    "email": principal.email,
                    "target": body.target,
                    "incident": body.incident,
                    "reason": body.reason,
                    "drill": body.drill,
                    "explanation": refusal,
                    **origin.detail(),
                },
            )
            raise ApiError(403, "denied", refusal)
        assert target is not None
        duration = (
            timedelta(seconds=body.duration_seconds)
            if body.duration_seconds
            else policy.max_duration
        )
        role = policy.targets[target]
        granted = self.service.issue(
            principal,
            target_name=target,
            role=role,
            duration=duration,
            rule="breakglass",
            reason=body.reason.strip(),
            ticket=body.incident,
            origin=origin,
            incident=body.incident,
            drill=body.drill,
        )
        label = "DRILL: break-glass" if body.drill else "BREAK-GLASS"
        self.service.notifier.send(
            "breakglass.drill" if body.drill else "breakglass.opened",
            f"{label}: {principal.handle} opened {role} on {target} for incident "
            f"{body.incident} until {granted.expires_at:%Y-%m-%d %H:%M} UTC — "
            f"reason: {body.reason.strip()}",
            user=principal.subject,
            email=principal.email,
            target=target,
            role=role,
            db_user=granted.db_user,
            incident=body.incident,
            reason=body.reason.strip(),
            drill=body.drill,
            session_id=granted.id,
            expires_at=granted.expires_at,
        )
        return granted

    def _refusal(
        self, principal: Principal, body: BreakglassCreate, policy: BreakglassSection
    ) -> str | None:
        if not principal.groups & set(policy.groups):
            return f"break-glass is for members of {', '.join(policy.groups)}"
        if not re.fullmatch(policy.incident_pattern, body.incident):
            return f"incident id '{body.incident}' does not match {policy.incident_pattern}"
        if not body.reason.strip():
            return "break-glass needs a reason (--reason)"
        if body.duration_seconds and timedelta(seconds=body.duration_seconds) > policy.max_duration:
            return f"break-glass lasts at most {format_duration(policy.max_duration)}"
        return None

    # -- reviews ---------------------------------------------------------------------

    def _reviewer(self, principal: Principal) -> None:
        policy = self._policy()
        reviewers = set(policy.reviewer_groups or self.service.settings.broker.auditor_groups)
        if not principal.groups & reviewers:
            raise ApiError(
                403,
                "denied",
                "reviewing break-glass sessions needs a reviewer group",
                f"members of {', '.join(sorted(reviewers)) or '(none configured)'} review",
            )

    def open_reviews(self, principal: Principal) -> list[ReviewInfo]:
        self._reviewer(principal)
        return [review_info(lease) for lease in self.service.store.open_reviews()]

    def close_review(
        self, principal: Principal, lease_id: str, note: str, origin: Origin
    ) -> ReviewInfo:
        self._reviewer(principal)
        current = self.service.store.get(lease_id)
        if current is not None and current.subject == principal.subject:
            raise ApiError(
                403,
                "self_review",
                "the user who broke the glass cannot close its review",
                "ask another reviewer",
            )
        try:
            lease = self.service.store.close_review(
                lease_id, principal.subject, note.strip(), self.service.clock(), origin.detail()
            )
        except LookupError:
            raise ApiError(
                404,
                "not_found",
                f"no break-glass session {lease_id}",
                "dbaccess review lists the open reviews",
            ) from None
        except Conflict as exc:
            raise ApiError(
                409, "conflict", str(exc), "dbaccess review lists the open reviews"
            ) from None
        return review_info(lease)


def review_info(lease: Lease) -> ReviewInfo:
    return ReviewInfo(
        id=lease.id,
        subject=lease.subject,
        email=lease.email,
        target=lease.target,
        role=lease.role,
        db_user=lease.db_user,
        incident=lease.incident,
        reason=lease.reason,
        drill=lease.drill,
        state=lease.state,
        created_at=lease.created_at,
        expires_at=lease.expires_at,
        review_state=lease.review_state,
        reviewed_by=lease.reviewed_by,
        review_note=lease.review_note,
    )
