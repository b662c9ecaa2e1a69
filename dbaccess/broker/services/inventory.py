"""The standing-privilege inventory for auditors (``GET /v1/inventory``): the same
judgement as ``dbaccess-broker inventory`` (broker/inventory.py), over the broker's own
engines and store, for the people in an auditor group only."""

from __future__ import annotations

from dbaccess.broker.identity import Principal
from dbaccess.broker.inventory import live_users, take
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext
from dbaccess.wire import InventoryReport


class StandingAccounts:
    def __init__(self, ctx: BrokerContext) -> None:
        self.ctx = ctx

    def report(self, principal: Principal, target: str | None = None) -> InventoryReport:
        settings = self.ctx.settings
        if not principal.groups & set(settings.broker.auditor_groups):
            raise refusals.Denied(
                "denied",
                "the inventory of standing accounts needs an auditor group",
                "ask for membership of an auditor group",
            )
        if target is not None and target not in settings.targets:
            raise refusals.NotFound(
                "unknown_target",
                f"no target '{target}'",
                f"one of: {', '.join(sorted(settings.targets))}",
            )
        live = live_users(self.ctx.store.live_leases())
        names = [target] if target is not None else sorted(settings.targets)
        taken = take(settings, self.ctx.engines, live, names)
        return InventoryReport.model_validate(taken.as_json(self.ctx.clock()))
