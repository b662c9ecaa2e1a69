"""PostgreSQL: ``engine`` (the broker's calls), ``bootstrap`` (the one-time SQL), ``admin``
(the operator's commands) and ``checks`` (check-config's questions), each a protocol of
engines/base.py; registered in engines/registry.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy --strict (scripts/check) holds the modules to the protocols
    from dbaccess.broker.engines.base import (
        EngineAdmin,
        EngineBootstrap,
        EngineChecks,
        EngineModule,
    )
    from dbaccess.broker.engines.postgres import admin, bootstrap, checks, engine

    _PARTS: tuple[EngineModule, EngineBootstrap, EngineAdmin, EngineChecks] = (
        engine,
        bootstrap,
        admin,
        checks,
    )
