"""The standing-privilege inventory: every human (or service) path into each target that
is not a live dbaccess session, with what makes it risky.

Each engine lists its login accounts through the bootstrap's definer routine
(``Engine.inventory``); here they are judged against the configuration and the store:
a live session's user is left out (it is what dbaccess is for), the provisioner is known,
an ``[inventory] allow`` entry makes an account explicit, and everything else is a
finding, whatever its risks (a plain login nobody listed is still a standing path). A
dbaccess-made user without a live lease is an orphan: always a finding.

The JSON form is what ``--diff`` compares: an account is named by target and name, so a
later run says which appeared, which went, and whose risks changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from dbaccess.broker.engines.base import Account, Engine, EngineError
from dbaccess.broker.settings import Settings
from dbaccess.broker.store.rows import Lease
from dbaccess.timestamps import rfc3339

# What each kind of entry is, in the report's order of concern.
FINDING = "finding"
ALLOWED = "allowed"
PROVISIONER = "provisioner"


@dataclass(frozen=True)
class Entry:
    target: str
    account: str
    status: str  # FINDING, ALLOWED or PROVISIONER
    risks: tuple[str, ...]
    member_of: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.target}:{self.account}"


@dataclass
class Inventory:
    entries: list[Entry] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # target -> why it was not read

    @property
    def findings(self) -> list[Entry]:
        return [e for e in self.entries if e.status == FINDING]

    def as_json(self, taken_at: datetime) -> dict[str, Any]:
        return {
            "taken_at": rfc3339(taken_at),
            "accounts": [
                {**asdict(e), "risks": list(e.risks), "member_of": list(e.member_of)}
                for e in self.entries
            ],
            "errors": self.errors,
        }


def risks_of(account: Account, template_roles: Iterable[str], leased: bool) -> tuple[str, ...]:
    """What makes the account a risk, worded for an auditor."""
    risks = [f"has {power}" for power in account.powers]
    risks += [f"member of privileged role {role}" for role in account.privileged_roles]
    templates = set(template_roles)
    risks += [
        f"member of template role {role} (standing access of a JIT role)"
        for role in account.member_of
        if role in templates
    ]
    if account.password_expires is None:
        risks.append("password never expires")
    if account.owns:
        risks.append(f"owns {account.owns} object(s)")
    if account.managed and not leased:
        risks.append("a dbaccess user with no live lease (an orphan)")
    return tuple(risks)


def judge(
    settings: Settings, target: str, accounts: Iterable[Account], live_users: set[str]
) -> list[Entry]:
    """The entries of one target: live session users left out, the rest judged."""
    section = settings.targets[target]
    templates = [role.group_role for role in section.roles.values()]
    provisioner = section.provisioner.user
    entries = []
    for account in accounts:
        user = account.user
        leased = user in live_users
        if account.managed and leased:
            continue  # a live session: what dbaccess is for
        risks = risks_of(account, templates, leased)
        if user == provisioner and not account.managed:
            status = PROVISIONER
        elif not account.managed and settings.inventory.allows(target, account.name):
            status = ALLOWED
        else:
            status = FINDING
        entries.append(Entry(target, account.name, status, risks, account.member_of))
    return entries


def live_users(leases: Iterable[Lease]) -> dict[str, set[str]]:
    """The database users of live sessions, per target: what an inventory leaves out."""
    live: dict[str, set[str]] = {}
    for lease in leases:
        live.setdefault(lease.target, set()).add(lease.db_user)
    return live


def take(
    settings: Settings,
    engines: Mapping[str, Engine],
    live_users: Mapping[str, set[str]],
    targets: Iterable[str] | None = None,
) -> Inventory:
    """The inventory of ``targets`` (all by default); a target that cannot be read is
    named in ``errors``, the others are still listed."""
    inventory = Inventory()
    for name in targets if targets is not None else sorted(settings.targets):
        try:
            accounts = engines[name].inventory()
        except EngineError as exc:
            inventory.errors[name] = str(exc)
            continue
        inventory.entries += judge(settings, name, accounts, live_users.get(name, set()))
    return inventory


@dataclass(frozen=True)
class Difference:
    appeared: list[dict[str, Any]]
    went: list[dict[str, Any]]
    changed: list[tuple[dict[str, Any], dict[str, Any]]]  # (before, now)

    @property
    def empty(self) -> bool:
        return not (self.appeared or self.went or self.changed)


def difference(previous: Mapping[str, Any], current: Mapping[str, Any]) -> Difference:
    """What changed between two ``as_json`` documents, by target and account name."""

    def by_key(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        accounts = document.get("accounts")
        if not isinstance(accounts, list):
            raise ValueError("not an inventory: no 'accounts' list")
        found = {}
        for entry in accounts:
            if not isinstance(entry, dict) or not {"target", "account"} <= entry.keys():
                raise ValueError("not an inventory: an account without target and name")
            found[f"{entry['target']}:{entry['account']}"] = entry
        return found

    before, now = by_key(previous), by_key(current)
    return Difference(
        appeared=[now[k] for k in sorted(now.keys() - before.keys())],
        went=[before[k] for k in sorted(before.keys() - now.keys())],
        changed=[
            (before[k], now[k])
            for k in sorted(now.keys() & before.keys())
            if (before[k].get("status"), before[k].get("risks"))
            != (now[k].get("status"), now[k].get("risks"))
        ],
    )
