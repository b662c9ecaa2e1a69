"""PostgreSQL clients: credentials through a 0600 passfile named by ``PGPASSFILE``.

libpq ignores a passfile that is group- or world-readable, and psql re-reads it on ``\\c``;
a password in a conninfo string would be visible to every user in ``ps``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from dbaccess.client.dbclients.programs import find_program

if TYPE_CHECKING:
    from dbaccess.client.dbclients.base import Granted
    from dbaccess.client.session.directory import SessionDir

VARIABLE = "DBACCESS_PSQL"
CREDS_HINT: str | None = None
# libpq's variables: the user's shell's are kept out of every session
SCRUBBED_PREFIXES: tuple[str, ...] = ("PG",)
INSTALL_HINTS: dict[str, str] = {
    "psql": "install the PostgreSQL client (apt-get install postgresql-client)",
    "pg_dump": "install the PostgreSQL client (apt-get install postgresql-client)",
    "pgcli": "install it (pipx install pgcli, or apt-get install pgcli)",
}


def find_default() -> str:
    return find_psql()


def find_psql() -> str:
    """The real psql binary: Debian's /usr/bin/psql is a Perl wrapper that costs ~30 ms."""
    override = os.environ.get(VARIABLE)
    if override:
        return find_program(override, other="correct DBACCESS_PSQL")
    found = find_program("psql", other="set DBACCESS_PSQL to its path")
    if os.path.realpath(found).endswith("pg_wrapper"):
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/psql"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        if versions:
            return str(versions[-1])
    return found


def _passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def prepare(
    granted: Granted, directory: SessionDir, client: str, args: list[str]
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for a PostgreSQL client; the password only in the passfile."""
    line = ":".join(
        _passfile_field(v)
        for v in (
            granted.host,
            str(granted.port),
            granted.database,
            granted.db_user,
            granted.password.get_secret_value(),
        )
    )
    passfile = directory.write_file("pgpass", line + "\n")
    env = {
        "PGHOST": granted.host,
        "PGPORT": str(granted.port),
        "PGUSER": granted.db_user,
        "PGDATABASE": granted.database,
        "PGPASSFILE": str(passfile),
        "PGAPPNAME": "dbaccess",
    }
    if granted.sslmode:
        env["PGSSLMODE"] = granted.sslmode
    if granted.ca_certificate:  # a gateway target: verify the gateway with the broker's CA
        env["PGSSLROOTCERT"] = str(directory.write_file("root.crt", granted.ca_certificate))
    return [client, *args], env


def export_env(granted: Granted) -> dict[str, str]:
    """The variables libpq reads, for ``creds``."""
    extra = {}
    if granted.ca_certificate:
        from dbaccess.client.config import ca_file  # creds only: not on the fast path

        extra["PGSSLROOTCERT"] = str(ca_file(granted.ca_certificate))
    return {
        "PGHOST": granted.host,
        "PGPORT": str(granted.port),
        "PGUSER": granted.db_user,
        "PGDATABASE": granted.database,
        "PGPASSWORD": granted.password.get_secret_value(),
        # Always set: a PGSSLMODE left in the shell (say, disable) would otherwise win
        # over the target's. A target that names none gets the broker's default,
        # prefer, which is libpq's own default and what connect and exec use.
        "PGSSLMODE": granted.sslmode or "prefer",
        **extra,
    }
