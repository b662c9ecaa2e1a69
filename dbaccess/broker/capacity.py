"""Do the connection caps (``[limits]``) fit the servers? ``check-config`` asks each server
its max_connections, as the provisioner, and warns when the session users the broker may
create there could take every connection the server has left for others; ``serve`` logs
the same warnings at start-up and after a configuration reload (log_capacity_warnings).

A target's budget is what its session users may open at once — ``connections_per_target``,
plus ``breakglass_connections_per_target`` where break-glass covers it — and the broker's
own connections (the provisioner's pool, per broker process). Targets on one server share
its max_connections, so their budgets are added up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dbaccess.broker.engines import checks_for
from dbaccess.broker.settings import Settings


@dataclass(frozen=True)
class ServerBudget:
    engine: str
    host: str
    port: int
    targets: tuple[str, ...]
    sessions: int  # what session users may open, break-glass included
    broker: int  # the broker's own connections (one process: the engine's broker_connections)

    @property
    def total(self) -> int:
        return self.sessions + self.broker


def budgets(settings: Settings) -> list[ServerBudget]:
    """One budget per server (engine, host, port) the targets are on."""
    covered = settings.breakglass.targets if settings.breakglass else {}
    by_server: dict[tuple[str, str, int], list[str]] = {}
    for name, target in settings.targets.items():
        by_server.setdefault((target.engine, target.host, target.port), []).append(name)
    found = []
    for (engine, host, port), names in sorted(by_server.items()):
        sessions = broker = 0
        for name in names:
            sessions += settings.limit(name, "connections_per_target")[0]
            if name in covered:
                sessions += settings.limit(name, "breakglass_connections_per_target")[0]
            broker += checks_for(engine).broker_connections(
                settings.targets[name], settings.broker.revoke_workers
            )
        found.append(ServerBudget(engine, host, port, tuple(names), sessions, broker))
    return found


def capacity_warnings(settings: Settings) -> list[str]:
    """A warning for each server whose budget does not fit below its max_connections (or
    whose max_connections could not be read)."""
    warnings = []
    for budget in budgets(settings):
        where = f"{budget.engine} {budget.host}:{budget.port}"
        names = ", ".join(repr(n) for n in budget.targets)
        try:
            target = settings.targets[budget.targets[0]]
            most, reserved = checks_for(budget.engine).server_connections(target)
        except Exception as exc:  # a warning only: check_target reports unreachable servers
            warnings.append(
                f"could not read max_connections of {where} (targets {names}): {type(exc).__name__}"
            )
            continue
        room = most - reserved
        if budget.total >= room:
            warnings.append(
                f"targets {names} on {where}: their session users may open {budget.sessions} "
                f"connections (limits.connections_per_target, plus break-glass's "
                f"breakglass_connections_per_target) and the broker {budget.broker} more, "
                f"{budget.total} in all, but the server allows {room} "
                f"(max_connections {most}, {reserved} reserved): a full target would leave "
                "no connection for anyone else; lower those limits or raise max_connections"
            )
    return warnings


def log_capacity_warnings(settings: Settings) -> None:
    """At broker start-up (and after a reload), in a thread of its own: log what
    capacity_warnings finds. Only a warning, never a refusal to start: a target that is
    down, or a budget too large today, must not keep the broker from serving the others."""
    log = logging.getLogger("dbaccess.broker")
    try:
        found = capacity_warnings(settings)
    except Exception as exc:  # noqa: BLE001 - e.g. a provisioner password gone meanwhile
        log.warning(
            "connection caps: cannot check them against the servers: %s", type(exc).__name__
        )
        return
    for warning in found:
        log.warning("connection caps: %s", warning)
