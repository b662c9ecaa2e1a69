"""MariaDB/MySQL clients: credentials in a 0600 option file named by the first argument.

``--defaults-extra-file`` must be the very first argument or the client ignores it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dbaccess.errors import LaunchError
from dbaccess.launch.session_dir import SessionDir

if TYPE_CHECKING:
    from dbaccess.launch.session import Granted


def find_mysql() -> str:
    override = os.environ.get("DBACCESS_MYSQL")
    if override:
        return override
    for name in ("mariadb", "mysql"):
        found = shutil.which(name)
        if found:
            return found
    raise LaunchError("neither mariadb nor mysql was found on PATH",
                      hint="install the client (apt-get install mariadb-client)")


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prepare(granted: Granted, directory: SessionDir, client: str,
            args: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment for a MariaDB/MySQL client; the password only in the file."""
    options = {
        "user": granted.db_user,
        "password": granted.password.get_secret_value(),
        "host": granted.host,
        "port": str(granted.port),
        "database": granted.database,
    }
    body = "[client]\n" + "".join(f"{k}={_option_value(v)}\n" for k, v in options.items())
    path = directory.write_file("my.cnf", body)
    # For exec: MariaDB and MySQL tools also read $MYSQL_HOME/my.cnf by themselves.
    env = {"MYSQL_HOME": str(directory.path), "DBACCESS_MYSQL_DEFAULTS_FILE": str(path)}
    if Path(client).name in ("mariadb", "mysql"):
        # must be the very first argument, or the client ignores it
        return [client, f"--defaults-extra-file={path}", *args], env
    return [client, *args], env  # e.g. mycli: reads $MYSQL_HOME/my.cnf
