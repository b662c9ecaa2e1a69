"""Database engines: one package each (postgres/, mariadb/), registered by name in
registry.py."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import cast

from dbaccess.broker.engines.base import Engine, EngineError, EngineRefused, NewUser
from dbaccess.broker.engines.registry import ENGINES
from dbaccess.broker.settings import TargetSection


def engine_part(kind: str, part: str) -> ModuleType:
    """``part`` ("engine", "bootstrap" or "admin") of the engine ``kind``, imported now
    (with its driver). ``kind`` is a registered name: settings validation sees to it."""
    return importlib.import_module(f"{ENGINES[kind]}.{part}")


def engine_for(name: str, target: TargetSection) -> Engine:
    """Build the engine named by a target's ``engine`` key."""
    return cast(Engine, engine_part(target.engine, "engine").ENGINE(name, target))


__all__ = ["ENGINES", "Engine", "EngineError", "EngineRefused", "NewUser", "engine_for",
           "engine_part"]
