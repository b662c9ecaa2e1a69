"""Database engines: one package each (postgres/, mariadb/), registered by name in
registry.py."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import cast

from dbaccess.broker.engines.base import (
    Engine,
    EngineChecks,
    EngineError,
    EngineRefused,
    NewUser,
)
from dbaccess.broker.engines.registry import ENGINES
from dbaccess.broker.settings import TargetSection


def engine_part(kind: str, part: str) -> ModuleType:
    """``part`` ("engine", "bootstrap", "admin" or "checks") of the engine ``kind``,
    imported now (with its driver, but for "checks"). ``kind`` is a registered name:
    settings validation sees to it."""
    return importlib.import_module(f"{ENGINES[kind]}.{part}")


def engine_for(name: str, target: TargetSection) -> Engine:
    """Build the engine named by a target's ``engine`` key."""
    return cast(Engine, engine_part(target.engine, "engine").ENGINE(name, target))


def checks_for(kind: str) -> EngineChecks:
    """The checks (``check-config``, start-up) of the engine ``kind``."""
    return cast(EngineChecks, engine_part(kind, "checks"))


__all__ = [
    "ENGINES",
    "Engine",
    "EngineChecks",
    "EngineError",
    "EngineRefused",
    "NewUser",
    "checks_for",
    "engine_for",
    "engine_part",
]
