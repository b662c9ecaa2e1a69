"""``dbaccess-broker mask verify``: a real, short-lived session user of a masked template
tries the known bypasses of its masked columns; each probe is reported, leaked or not.

The user is made through the engine's own ``create_user`` (exactly what a person's
session gets) and dropped at the end whatever happened; it expires within minutes on
its own should this process die in between. A probe's report never holds a leaked
value: a length and a hash prefix show that something came back."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dbaccess.broker.engines.base import (
    Engine,
    EngineError,
    NewUser,
    make_password,
    make_username,
)
from dbaccess.broker.engines.registry import ENGINES
from dbaccess.broker.settings import TargetSection

PROBE_USER_LIFETIME = timedelta(minutes=5)


@dataclass(frozen=True)
class Probe:
    column: str  # schema.table.column
    name: str  # e.g. "cast-int-error"
    tried: str  # the statement
    leaked: bool
    detail: str  # what came back, never the value itself
    error: bool = False  # it could not tell (an unexpected error): not a pass


@dataclass
class Verdict:
    target: str
    role: str
    probes: list[Probe]

    @property
    def leaks(self) -> list[Probe]:
        return [p for p in self.probes if p.leaked]

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "role": self.role,
            "leaks": len(self.leaks),
            "probes": [asdict(p) for p in self.probes],
        }


def masked_roles(target: TargetSection) -> list[str]:
    return sorted(name for name, role in target.roles.items() if role.masked)


def verify(name: str, target: TargetSection, role_name: str, engine: Engine) -> Verdict:
    """Make a session user of ``role_name``, run the engine's probes as it, drop it."""
    try:
        probes_module = importlib.import_module(f"{ENGINES[target.engine]}.mask_probes")
    except ModuleNotFoundError:
        raise EngineError(f"mask verify does not know engine '{target.engine}' yet") from None
    role = target.roles[role_name]
    user = NewUser(
        username=make_username(target.username_prefix, "maskverify", engine.max_username_length),
        password=make_password(),
        role=role,
        expires_at=datetime.now(UTC) + PROBE_USER_LIFETIME,
    )
    engine.create_user(user)
    try:
        probes = probes_module.probe(target, role, user.username, user.password)
    finally:
        engine.revoke_user(user.username)
    return Verdict(name, role_name, list(probes))


def report_lines(verdict: Verdict) -> list[str]:
    lines = [
        f"{verdict.target} {verdict.role}: {len(verdict.leaks)} leak(s) in "
        f"{len(verdict.probes)} probe(s)"
    ]
    for p in verdict.probes:
        state = "LEAKED" if p.leaked else ("unclear" if p.error else "safe")
        lines.append(f"{state:7} {p.column:30} {p.name:16} {p.detail}")
    return lines
