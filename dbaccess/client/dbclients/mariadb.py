"""MariaDB/MySQL clients: credentials in a 0600 option file named by the first argument.

``--defaults-extra-file`` must be the very first argument or the client ignores it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dbaccess.client.dbclients.programs import find_program
from dbaccess.errors import LaunchError

if TYPE_CHECKING:
    from dbaccess.client.dbclients.base import Granted
    from dbaccess.client.session.directory import SessionDir

VARIABLE = "DBACCESS_MYSQL"
# the client reads MYSQL_HOST, MYSQL_TCP_PORT and MYSQL_PWD, but no user or database
CREDS_HINT: str | None = 'dbaccess: then run: mariadb -u "$MYSQL_USER" "$MYSQL_DATABASE"'
# the client's variables: the user's shell's are kept out of every session
SCRUBBED_PREFIXES: tuple[str, ...] = ("MYSQL_",)
INSTALL_HINTS: dict[str, str] = {
    "mariadb": "install the client (apt-get install mariadb-client)",
    "mysql": "install the client (apt-get install mariadb-client)",
    "mysqldump": "install the client (apt-get install mariadb-client)",
    "mycli": "install it (pipx install mycli, or apt-get install mycli)",
}


def find_default() -> str:
    return find_mysql()


def find_mysql() -> str:
    override = os.environ.get(VARIABLE)
    if override:
        return find_program(override, other="correct DBACCESS_MYSQL")
    for name in ("mariadb", "mysql"):
        found = shutil.which(name)
        if found:
            return found
    raise LaunchError(
        "neither mariadb nor mysql was found on PATH",
        hint="install the client (apt-get install mariadb-client), or set "
        "DBACCESS_MYSQL to its path",
    )


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def option_file(granted: Granted) -> str:
    """The option file, one group per kind of tool: every MariaDB/MySQL program reads
    ``[client]``, but only the interactive client knows ``database``; mysqldump (and
    mysqladmin...) stop with "unknown variable 'database'" when it is under ``[client]``."""
    client = {
        "user": granted.db_user,
        "password": granted.password.get_secret_value(),
        "host": granted.host,
        "port": str(granted.port),
    }
    return (
        "[client]\n"
        + "".join(f"{k}={_option_value(v)}\n" for k, v in client.items())
        # read by mysql and mariadb (MariaDB's client reads [mysql] too)
        + f"[mysql]\ndatabase={_option_value(granted.database)}\n"
        # read by mysqldump and mariadb-dump: a consistent InnoDB snapshot without LOCK
        # TABLES, a privilege that would let a read-only session block every writer
        + "[mysqldump]\nsingle-transaction\n"
    )


def prepare(
    granted: Granted, directory: SessionDir, client: str, args: list[str]
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for a MariaDB/MySQL client; the password only in the file."""
    path = directory.write_file("my.cnf", option_file(granted))
    # For exec: MariaDB and MySQL tools also read $MYSQL_HOME/my.cnf by themselves.
    env = {"MYSQL_HOME": str(directory.path), "DBACCESS_MYSQL_DEFAULTS_FILE": str(path)}
    name = Path(client).name
    if name in ("mariadb", "mysql"):
        # must be the very first argument, or the client ignores it
        return [client, f"--defaults-extra-file={path}", *args], env
    if name == "mycli":
        return mycli_argv(granted, directory, client, args), env
    return [client, *args], env  # any other tool: $MYSQL_HOME/my.cnf, if it reads one


def mycli_argv(granted: Granted, directory: SessionDir, client: str, args: list[str]) -> list[str]:
    """mycli (measured: 2.30) reads no my.cnf, only ~/.myclirc and ~/.mylogin.cnf; its
    --password-file reads the first line of a file, so the password stays out of argv."""
    secret = directory.write_file("password", granted.password.get_secret_value() + "\n")
    return [
        client,
        # it would otherwise store the password in the system keyring when ~/.myclirc asks
        # for that, and it would outlive the session there
        "--use-keyring=false",
        f"--password-file={secret}",
        "--host",
        granted.host,
        "--port",
        str(granted.port),
        "--user",
        granted.db_user,
        "--database",
        granted.database,
        *args,  # after ours: click takes the last of a repeated option (-D other)
    ]


def export_env(granted: Granted) -> dict[str, str]:
    """The variables the MariaDB/MySQL clients read, for ``creds``."""
    return {
        "MYSQL_HOST": granted.host,
        "MYSQL_TCP_PORT": str(granted.port),
        "MYSQL_PWD": granted.password.get_secret_value(),
        # mariadb and mysql read neither (they take $USER as the user): for
        # `mariadb -u "$MYSQL_USER" "$MYSQL_DATABASE"`; mycli reads MYSQL_USER itself
        "MYSQL_USER": granted.db_user,
        "MYSQL_DATABASE": granted.database,
    }
