"""Finding the programs a session will run, before the broker is asked for one."""

from __future__ import annotations

import os
import shutil

from dbaccess.errors import LaunchError

# How to get the clients people name most; anything else gets the generic hint.
INSTALL_HINTS = {
    "psql": "install the PostgreSQL client (apt-get install postgresql-client)",
    "pg_dump": "install the PostgreSQL client (apt-get install postgresql-client)",
    "mariadb": "install the client (apt-get install mariadb-client)",
    "mysql": "install the client (apt-get install mariadb-client)",
    "mysqldump": "install the client (apt-get install mariadb-client)",
    "pgcli": "install it (pipx install pgcli, or apt-get install pgcli)",
    "mycli": "install it (pipx install mycli, or apt-get install mycli)",
}


def find_program(name: str, *, other: str = "name another client with --client") -> str:
    """The executable ``name`` runs as: looked up on PATH, or as given when it holds a
    slash. Raised as a LaunchError with an install hint, so callers can check before the
    broker is asked for anything."""
    found = shutil.which(name)
    if found is None:
        where = "is not an executable file" if os.sep in name else "was not found on PATH"
        hint = INSTALL_HINTS.get(os.path.basename(name), "install it")
        raise LaunchError(f"{name} {where}", hint=f"{hint}, or {other}")
    return found
