"""Policy: a pure function from (who, what) to a decision that names the rule that matched.

Deny by default. A rule matches when it names one of the caller's groups (or the caller's
subject, or verified email), the target and the role (``*`` matches any). Rules are read in
file order; the first matching rule that allows the requested duration wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbaccess.broker.identity import Principal
from dbaccess.broker.oncall import Shift
from dbaccess.broker.settings import BreakglassSection, Rule
from dbaccess.durations import format_duration

DEFAULT_DURATION = timedelta(hours=1)
# A shift ending sooner grants nothing without approvals (a session that short is no use)
MIN_ON_CALL_LEFT = timedelta(minutes=1)

# (source, verified email or None, now) -> the shift of that person then, or None
OnCallLookup = Callable[[str, str | None, datetime], Shift | None]


@dataclass(frozen=True)
class AccessRequest:
    target: str
    role: str
    duration: timedelta | None = None
    reason: str | None = None
    ticket: str | None = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    explanation: str
    rule: str | None = None
    duration: timedelta | None = None
    approvals_required: int = 0
    approver_groups: tuple[str, ...] = ()
    # "reason" when a reason is all that is missing (a terminal can prompt for one)
    missing: str | None = None
    # Refused for its length alone: the longest any matching rule allows (for the hint)
    max_duration: timedelta | None = None
    tier: str | None = None  # the rule's tier the request landed in (more approvals)
    on_call: Shift | None = None  # approvals waived: the requester's shift (its evidence)


def rule_covers(rule: Rule, target: str, role: str) -> bool:
    """Does ``rule`` name ``target`` and ``role`` (``*`` matching any)? Who it is for aside:
    the one place a rule's targets and roles are matched, by policy and revocation alike."""
    return ("*" in rule.targets or target in rule.targets) and (
        "*" in rule.roles or role in rule.roles
    )


def rule_applies(rule: Rule, principal: Principal, target: str, role: str) -> bool:
    who = bool(principal.groups & set(rule.groups)) or principal.named_by(rule.users)
    return who and rule_covers(rule, target, role)


def breakglass_covers(section: BreakglassSection | None, target: str, role: str) -> bool:
    """Does the break-glass section (None: there is none) open ``role`` on ``target``?
    It names one role per target, matched exactly (no wildcards)."""
    return section is not None and section.targets.get(target) == role


def waiving_shift(
    rule: Rule,
    role: str,
    principal: Principal,
    on_call: OnCallLookup | None,
    now: datetime | None,
) -> Shift | None:
    """The requester's shift that waives ``rule``'s approvals for ``role`` now: on call in
    the rule's source, at one of its levels, with a minute left at least; else None. Only a
    verified email is looked up."""
    if rule.oncall is None or not rule.oncall_covers(role) or on_call is None or now is None:
        return None
    shift = on_call(rule.oncall.source, principal.verified_email, now)
    if shift is None or shift.level not in rule.oncall.levels:
        return None
    return shift if shift.end - now >= MIN_ON_CALL_LEFT else None


def decide(
    principal: Principal,
    request: AccessRequest,
    rules: Sequence[Rule],
    on_call: OnCallLookup | None = None,
    now: datetime | None = None,
) -> Decision:
    """``on_call`` (with ``now``) is asked only where a rule's approvals could be waived
    for the people on call; without it, those rules ask their approvals."""
    matching = [r for r in rules if rule_applies(r, principal, request.target, request.role)]
    if not matching:
        return Decision(
            False,
            f"no rule grants role '{request.role}' on '{request.target}' to {principal.handle}",
        )
    reasons = []
    only_reason_missing = True
    too_long = 0
    for rule in matching:
        duration = request.duration or min(
            rule.default_duration or DEFAULT_DURATION, rule.max_duration
        )
        if duration > rule.max_duration:
            only_reason_missing = False
            too_long += 1
            reasons.append(
                f"rule '{rule.name}' allows at most {format_duration(rule.max_duration)}"
            )
            continue
        if rule.require_reason and not (request.reason and request.reason.strip()):
            reasons.append(f"rule '{rule.name}' requires a reason (--reason)")
            continue
        if rule.ticket_pattern and not re.fullmatch(rule.ticket_pattern, request.ticket or ""):
            only_reason_missing = False
            reasons.append(
                f"rule '{rule.name}' requires a ticket matching {rule.ticket_pattern} (--ticket)"
            )
            continue
        tier = rule.tier_for(request.role, duration)
        approvals = tier.approvals if tier is not None else rule.approvals
        approvers = tuple(
            (tier.approver_groups or rule.approver_groups) if tier is not None
            else rule.approver_groups
        )  # fmt: skip
        explanation = f"granted by rule '{rule.name}'"
        if tier is not None:
            explanation += f", tier '{tier.name}'"
        shift, off_call = None, ""
        if approvals and rule.oncall is not None and rule.oncall_covers(request.role):
            shift = waiving_shift(rule, request.role, principal, on_call, now)
            if shift is None:
                off_call = f" (not on call in '{rule.oncall.source}' now)"
        if shift is not None:
            assert now is not None
            duration = min(duration, timedelta(seconds=int((shift.end - now).total_seconds())))
            approvals, approvers = 0, ()
            explanation += (
                f" without approval: on call in '{shift.source}' (level {shift.level}) "
                f"until {shift.end:%Y-%m-%d %H:%M} UTC"
            )
        if approvals:
            explanation += f" once approved by {approvals} member(s) of {', '.join(approvers)}"
        explanation += off_call
        return Decision(
            True,
            explanation,
            rule.name,
            duration,
            approvals,
            approvers,
            tier=None if tier is None else tier.name,
            on_call=shift,
        )
    return Decision(
        False,
        "; ".join(reasons),
        matching[0].name,
        missing="reason" if only_reason_missing else None,
        max_duration=(max(r.max_duration for r in matching) if too_long == len(matching) else None),
    )


def entitlements(
    principal: Principal, rules: Sequence[Rule], targets: dict[str, list[str]]
) -> list[tuple[str, str, Rule]]:
    """(target, role, first matching rule) for every role the principal may request;
    ``targets`` maps each configured target to its role names."""
    found = []
    for target, roles in sorted(targets.items()):
        for role in sorted(roles):
            rule = next((r for r in rules if rule_applies(r, principal, target, role)), None)
            if rule is not None:
                found.append((target, role, rule))
    return found
