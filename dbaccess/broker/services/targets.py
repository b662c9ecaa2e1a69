"""What a caller may see of the targets: the target/role pairs some rule lets them request
(``GET /v1/targets``), and — when they ask for one no rule grants — what they may ask for
instead. Only the caller's own entitlements, nothing about anyone else's."""

from __future__ import annotations

from datetime import UTC, datetime

from dbaccess.broker.identity import Principal
from dbaccess.broker.policy import DEFAULT_DURATION, entitlements, waiving_shift
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.settings import Rule
from dbaccess.wire import OnCallWaiver, TargetAccess, TierInfo


class Targets:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def _entitled(self, principal: Principal) -> list[tuple[str, str, Rule]]:
        current = self.ctx.settings
        return entitlements(
            principal, current.rules, {n: list(t.roles) for n, t in current.targets.items()}
        )

    def visible_to(self, principal: Principal) -> list[TargetAccess]:
        """Every target and role the caller may request, with the first matching rule's
        terms: the tier a request of the default length lands in, the tiers that ask
        more of this role, and whether being on call waives its approvals — and, when the
        caller is on call now, until when (so the bar is known before the request is
        made)."""
        current = self.ctx.settings
        now = datetime.now(UTC)
        found = []
        for target, role, rule in self._entitled(principal):
            default = min(rule.default_duration or DEFAULT_DURATION, rule.max_duration)
            tier = rule.tier_for(role, default)
            on_call = None
            if (
                rule.oncall is not None
                and rule.oncall_covers(role)
                and rule.may_need_approval(role)
            ):
                # the caller's own shift only, as a request of theirs would be decided
                shift = waiving_shift(rule, role, principal, self.ctx.schedules.shift, now)
                on_call = OnCallWaiver(
                    source=rule.oncall.source,
                    levels=list(rule.oncall.levels),
                    until=None if shift is None else shift.end,
                )
            found.append(
                TargetAccess(
                    target=target,
                    engine=current.targets[target].engine,
                    access=current.targets[target].access,
                    role=role,
                    max_duration_seconds=int(rule.max_duration.total_seconds()),
                    default_duration_seconds=int(default.total_seconds()),
                    reason_required=rule.require_reason,
                    ticket_pattern=rule.ticket_pattern,
                    approvals=rule.approvals if tier is None else tier.approvals,
                    tier=None if tier is None else tier.name,
                    tiers=[
                        TierInfo(
                            name=t.name,
                            approvals=t.approvals,
                            longer_than_seconds=None
                            if t.longer_than is None
                            else int(t.longer_than.total_seconds()),
                        )
                        for t in rule.tiers
                        if (not t.roles or role in t.roles) and t.approvals > rule.approvals
                    ],
                    on_call=on_call,
                )
            )
        return found

    def what_you_may(self, principal: Principal, target: str) -> tuple[str, str]:
        """The message and hint of a request no rule grants: what the caller may ask for
        instead."""
        mine = self._entitled(principal)
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
                f"no rule grants you any role on '{target}'; you may use: {', '.join(elsewhere)}",
                "dbaccess targets lists the targets and roles you may request",
            )
        return (
            f"no rule of this broker grants you access to '{target}' or any other target",
            "ask an administrator to add you to a group the broker's rules name",
        )
