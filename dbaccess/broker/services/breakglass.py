"""Break-glass: emergency access that is fast, loud and fully recorded.

No approval wait. Instead: only the groups of the ``[breakglass]`` policy, an incident id
that matches its pattern, a reason, a short maximum duration and the policy's elevated
role; a webhook fires at once; the database logs every statement of the user; and the
session stays marked for a post-incident review that someone else must close. A drill
runs the same path and is recorded and announced as a drill.
"""

from __future__ import annotations

import importlib
import itertools
import re
from datetime import timedelta
from typing import Any

from dbaccess.broker.identity import Principal
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.broker.services.ids import resolve_id
from dbaccess.broker.services.incident_review import IncidentReviews, require_reviewer
from dbaccess.broker.services.issuer import Issuer
from dbaccess.broker.settings import BreakglassSection
from dbaccess.broker.store import Conflict, Lease, leases
from dbaccess.durations import format_duration
from dbaccess.timestamps import human as human_time
from dbaccess.wire import (
    BreakglassCreate,
    BreakglassPolicy,
    DrillInfo,
    ReviewInfo,
    SessionGranted,
)

DRILL_OVERDUE = "breakglass.drill_overdue"
DRILL_REMINDER_EVERY = timedelta(days=1)  # an overdue drill is announced at most this often

# The standard library's own regex parser (the "sre_parse" of old) reads the pattern for
# example_of; private (hence untyped), but stable since Python 3.11 and covered by a test.
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")


class Breakglass:
    def __init__(self, ctx: BrokerContext, issuer: Issuer) -> None:
        self.ctx = ctx
        self.issuer = issuer

    def _policy(self) -> BreakglassSection:
        policy = self.ctx.settings.breakglass
        if policy is None:
            raise refusals.NotFound(
                "breakglass_disabled",
                "this broker has no break-glass policy",
                "an administrator can add a [breakglass] section to the broker's config",
            )
        return policy

    def policy_for(self, principal: Principal) -> BreakglassPolicy:
        policy = self.ctx.settings.breakglass
        if policy is None or not principal.groups & set(policy.groups):
            return BreakglassPolicy(allowed=False)
        return BreakglassPolicy(
            allowed=True,
            targets=dict(policy.targets),
            engines={
                name: target.engine
                for name, target in self.ctx.settings.targets.items()
                if name in policy.targets
            },
            incident_pattern=policy.incident_pattern,
            **self._drill_status(policy),
            max_duration_seconds=int(policy.max_duration.total_seconds()),
        )

    def open(self, principal: Principal, body: BreakglassCreate, origin: Origin) -> SessionGranted:
        policy = self._policy()
        refusal = self._refusal(principal, body, policy)
        target = body.target or (next(iter(policy.targets)) if len(policy.targets) == 1 else None)
        if refusal is None and target is None:
            choices = ", ".join(sorted(policy.targets))
            raise refusals.Conflict(
                "target_required",
                f"break-glass covers several targets: {choices}",
                "name one: dbaccess breakglass TARGET --incident ...",
            )
        if refusal is None and target not in policy.targets:
            covered = sorted(policy.targets)
            refusal = (
                f"break-glass does not cover '{target}' (it covers {', '.join(covered)})",
                f"dbaccess breakglass {covered[0]} --incident {body.incident} --reason ...",
            )
        if refusal is not None:
            self.ctx.store.record(
                self.ctx.clock(),
                "breakglass.denied",
                principal.subject,
                {
                    "email": principal.verified_email,
                    "target": body.target,
                    "incident": body.incident,
                    "reason": body.reason,
                    "drill": body.drill,
                    "explanation": refusal[0],
                    **origin.detail(),
                },
            )
            raise refusals.Denied("denied", *refusal)
        assert target is not None
        duration = (
            timedelta(seconds=body.duration_seconds)
            if body.duration_seconds
            else policy.max_duration
        )
        role = policy.targets[target]
        granted = self.issuer.issue(
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
        self.ctx.notifier.send(
            "breakglass.drill" if body.drill else "breakglass.opened",
            f"{label}: {principal.handle} opened {role} on {target} for incident "
            f"{body.incident} until {granted.expires_at:%Y-%m-%d %H:%M} UTC — "
            f"reason: {body.reason.strip()}",
            user=principal.subject,
            email=principal.verified_email,
            target=target,
            role=role,
            db_user=granted.db_user,
            incident=body.incident,
            # the reviewers' page, when the broker serves the web pages ([web])
            review_link=f"{web.public_url}/web/reviews/"
            if (web := self.ctx.settings.web)
            else None,
            reason=body.reason.strip(),
            drill=body.drill,
            session_id=granted.id,
            expires_at=granted.expires_at,
        )
        return granted

    def _refusal(
        self, principal: Principal, body: BreakglassCreate, policy: BreakglassSection
    ) -> tuple[str, str] | None:
        """Why the glass stays shut, and what to do instead (message, hint)."""
        target = body.target or "TARGET"
        if not principal.groups & set(policy.groups):
            return (
                f"break-glass is for members of {', '.join(policy.groups)}",
                "for everyday access, dbaccess targets lists what you may request",
            )
        if not re.fullmatch(policy.incident_pattern, body.incident):
            example = example_of(policy.incident_pattern)
            form = f"an id like {example}" if example else "an id of that form"
            return (
                f"incident id '{body.incident}' does not match {policy.incident_pattern}: "
                f"give {form}",
                f"dbaccess breakglass {target} --incident {example or '...'} --reason ...",
            )
        if not body.reason.strip():
            return (
                "break-glass needs a reason (--reason)",
                f"dbaccess breakglass {target} --incident {body.incident} --reason TEXT",
            )
        if body.duration_seconds and timedelta(seconds=body.duration_seconds) > policy.max_duration:
            most = format_duration(policy.max_duration)
            return (
                f"break-glass lasts at most {most}",
                f"ask for at most {most} (or leave out --duration): dbaccess breakglass "
                f"{target} --incident {body.incident} --duration {most} --reason ...",
            )
        return None

    # -- drills ----------------------------------------------------------------------

    def _drill_status(self, policy: BreakglassSection) -> dict[str, Any]:
        if policy.drill_every is None:
            return {}
        last = self.ctx.store.last_drill()
        return {
            "drill_every_seconds": int(policy.drill_every.total_seconds()),
            "last_drill": last,
            "drill_overdue": last is None or self.ctx.clock() - last > policy.drill_every,
        }

    def drills(self, principal: Principal) -> list[DrillInfo]:
        """Everyone who has broken the glass, with their last drill (reviewers)."""
        self._reviewer(principal)
        every = self._policy().drill_every
        now = self.ctx.clock()
        return [
            DrillInfo(
                subject=subject,
                email=email,
                last_drill=last,
                breakglass_sessions=count,
                overdue=every is not None and (last is None or now - last > every),
            )
            for subject, email, last, count in self.ctx.store.drills()
        ]

    def announce_overdue_drill(self) -> bool:
        """From the reaper: when no drill ran within drill_every, say so (audit record and
        webhook), at most once a day; True when it did."""
        policy = self.ctx.settings.breakglass
        if policy is None or policy.drill_every is None:
            return False
        store, now = self.ctx.store, self.ctx.clock()
        last = store.last_drill()
        if last is not None and now - last <= policy.drill_every:
            return False
        announced = store.last_event_at(DRILL_OVERDUE)
        if announced is not None and now - announced < DRILL_REMINDER_EVERY:
            return False
        every = format_duration(policy.drill_every)
        since = "no drill was ever run" if last is None else f"the last was {human_time(last)}"
        # the event's name as a literal: tests/broker/test_audit_events.py reads it here
        store.record(
            now, "breakglass.drill_overdue", None, {"last_drill": last, "drill_every": every}
        )
        self.ctx.notifier.send(
            DRILL_OVERDUE,
            f"break-glass drill overdue: one is due every {every} and {since}; practice "
            "with: dbaccess breakglass TARGET --incident INC-... --reason ... --drill",
            last_drill=last,
            drill_every_seconds=int(policy.drill_every.total_seconds()),
        )
        return True

    # -- reviews ---------------------------------------------------------------------

    def _reviewer(self, principal: Principal) -> None:
        require_reviewer(self.ctx, principal)

    def open_reviews(self, principal: Principal) -> list[ReviewInfo]:
        self._reviewer(principal)
        return [review_info(lease) for lease in self.ctx.store.open_reviews()]

    def close_review(
        self, principal: Principal, lease_id: str, note: str, origin: Origin
    ) -> ReviewInfo:
        self._reviewer(principal)
        store = self.ctx.store
        lease_id = resolve_id(
            lease_id,
            lambda prefix: store.ids_starting_with(leases, prefix, leases.c.kind == "breakglass"),
            noun="break-glass session",
            not_found=refusals.NotFound(
                "not_found",
                f"no break-glass session {lease_id}",
                "dbaccess review lists the open reviews",
            ),
            listing="dbaccess review lists the open reviews",
        )
        current = store.get(lease_id)
        if current is not None and principal.same_person(
            current.subject, current.claimed_email or current.email
        ):
            raise refusals.Denied(
                "self_review",
                "the user who broke the glass cannot close its review",
                "ask another reviewer",
            )
        # the record the close vouches for: the incident's report as it stands now
        digest = None
        if current is not None and current.incident is not None:
            digest = IncidentReviews(self.ctx).build(current.incident).hash
        try:
            lease = self.ctx.store.close_review(
                lease_id,
                principal.subject,
                note.strip(),
                self.ctx.clock(),
                origin.detail(),
                report_sha256=digest,
            )
        except LookupError:
            raise refusals.NotFound(
                "not_found",
                f"no break-glass session {lease_id}",
                "dbaccess review lists the open reviews",
            ) from None
        except Conflict as exc:
            raise refusals.Conflict(
                "conflict", str(exc), "dbaccess review lists the open reviews"
            ) from None
        return review_info(lease, report_sha256=digest)


def review_info(lease: Lease, report_sha256: str | None = None) -> ReviewInfo:
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
        report_sha256=report_sha256,
    )


def example_of(pattern: str) -> str | None:
    """An id that ``pattern`` accepts, to show people (``INC-[0-9]+`` -> ``INC-123``):
    an example reads better than a regex at 3 a.m. None for patterns too clever for this
    small generator (lookarounds, negated classes...); the message then shows the regex
    alone."""
    try:
        parsed = _parser.parse(pattern)
        digits = itertools.cycle("1234567890")

        def one_of(items: list[tuple[Any, Any]]) -> str:
            for op, value in items:
                if op is _c.LITERAL:
                    return chr(value)
                if op is _c.RANGE:
                    lo, hi = value
                    if lo <= ord("1") <= hi:
                        digit = next(digits)
                        return digit if lo <= ord(digit) <= hi else "1"
                    return chr(lo)
                if op is _c.CATEGORY:
                    return {
                        _c.CATEGORY_DIGIT: next(digits),
                        _c.CATEGORY_WORD: "a",
                        _c.CATEGORY_SPACE: " ",
                    }[value]
            raise ValueError(pattern)  # NEGATE and the like

        def emit(items: Any) -> str:
            out = []
            for op, value in items:
                if op is _c.LITERAL:
                    out.append(chr(value))
                elif op is _c.IN:
                    out.append(one_of(value))
                elif op is _c.CATEGORY:
                    out.append(one_of([(op, value)]))
                elif op is _c.ANY:
                    out.append("x")
                elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
                    lo, hi, sub = value
                    out.extend(emit(sub) for _ in range(max(lo, min(hi, 3))))
                elif op is _c.SUBPATTERN:
                    out.append(emit(value[-1]))
                elif op is _c.BRANCH:
                    out.append(emit(value[1][0]))
                elif op is _c.AT:
                    continue  # ^ and $
                else:
                    raise ValueError(pattern)
            return "".join(out)

        example = emit(parsed)
    except Exception:  # only a hint: no pattern may turn a refusal into a 500
        return None
    return example if re.fullmatch(pattern, example) else None
