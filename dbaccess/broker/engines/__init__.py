"""Database engines: one module each, registered by name."""

from __future__ import annotations

from dbaccess.broker.engines.base import Engine, EngineError, EngineRefused, NewUser
from dbaccess.broker.settings import TargetSection


def engine_for(name: str, target: TargetSection) -> Engine:
    """Build the engine named by a target's ``engine`` key (imported lazily)."""
    if target.engine == "postgres":
        from dbaccess.broker.engines.postgres.engine import PostgresEngine

        return PostgresEngine(name, target)
    if target.engine == "mariadb":
        from dbaccess.broker.engines.mariadb.engine import MariaDBEngine

        return MariaDBEngine(name, target)
    raise ValueError(f"unknown engine {target.engine!r}")  # settings validation prevents this


__all__ = ["Engine", "EngineError", "EngineRefused", "NewUser", "engine_for"]
