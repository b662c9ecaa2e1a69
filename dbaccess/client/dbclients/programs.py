"""Finding the programs a session will run, before the broker is asked for one."""

from __future__ import annotations

import os
import shutil

from dbaccess.errors import LaunchError


def install_hint(program: str) -> str:
    """How to get ``program``: its engine's hint (each client module's ``INSTALL_HINTS``
    names the programs people name most), or the generic one."""
    # only on the way to an error: the registry imports every client module
    from dbaccess.client.dbclients.registry import CLIENTS

    for clients in CLIENTS.values():
        if program in clients.INSTALL_HINTS:
            return clients.INSTALL_HINTS[program]
    return "install it"


def find_program(name: str, *, other: str = "name another client with --client") -> str:
    """The executable ``name`` runs as: looked up on PATH, or as given when it holds a
    slash. Raised as a LaunchError with an install hint, so callers can check before the
    broker is asked for anything."""
    found = shutil.which(name)
    if found is None:
        where = "is not an executable file" if os.sep in name else "was not found on PATH"
        hint = install_hint(os.path.basename(name))
        raise LaunchError(f"{name} {where}", hint=f"{hint}, or {other}")
    return found
