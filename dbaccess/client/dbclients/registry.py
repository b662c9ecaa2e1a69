"""The database clients dbaccess can run, by engine: one line each. A client module (beside
this one) provides what ``base.DbClient`` names: the variable that picks its program, its
default program, how a session's credentials reach it, and ``creds``' export lines.
The broker's side is ``dbaccess/broker/engines/registry.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbaccess.client.dbclients import mariadb, postgres
from dbaccess.errors import UsageError

if TYPE_CHECKING:
    from dbaccess.client.dbclients.base import DbClient

CLIENTS: dict[str, DbClient] = {
    "postgres": postgres,
    "mariadb": mariadb,
}

ENGINES = tuple(CLIENTS)


def client_for(engine: str) -> DbClient:
    """The clients of ``engine``, or the usage error of an engine this version lacks."""
    found = CLIENTS.get(engine)
    if found is None:
        raise UsageError(
            f"engine '{engine}' is not supported by this version of dbaccess",
            hint="upgrade dbaccess",
        )
    return found
