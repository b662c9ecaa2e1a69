"""What an operator's commands do on a MariaDB/MySQL target, apart from the broker's own
calls: apply the bootstrap as root (``dbaccess-broker bootstrap --apply``, the admin DSN a
``mariadb://user:password@host:port`` URL) and change the provisioner's own password
(``rotate-credential``). Both send a password only as a hash."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pymysql

from dbaccess.broker.engines.base import CALL_TIMEOUT, CONNECT_TIMEOUT
from dbaccess.broker.engines.mariadb import bootstrap
from dbaccess.broker.settings import TargetSection
from dbaccess.errors import DatabaseError

# what DBACCESS_ADMIN_DSN looks like (the hint when it is not set)
ADMIN_DSN_EXAMPLE = "'mariadb://root:...@host:3306' (MariaDB)"


def apply_bootstrap(name: str, target: TargetSection, admin_dsn: str, password: str) -> list[str]:
    """Run the bootstrap through ``admin_dsn``; what the operator should know after
    (settings the bootstrap leaves to the server, e.g. event_scheduler)."""
    url = urlsplit(admin_dsn)
    try:
        admin = pymysql.connect(
            host=url.hostname or "127.0.0.1",
            port=url.port or 3306,
            user=unquote(url.username or "root"),
            password=unquote(url.password or ""),
            autocommit=True,
        )
    except pymysql.err.Error as exc:
        raise DatabaseError(f"bootstrap of '{name}' failed: {exc.args[-1]}") from None
    try:
        bootstrap.apply(target, admin, password)
        return bootstrap.warnings(admin)
    except pymysql.err.Error as exc:
        raise DatabaseError(f"bootstrap of '{name}' failed: {exc.args[-1]}") from None
    finally:
        admin.close()


def _as_provisioner(target: TargetSection, password: str) -> pymysql.connections.Connection:
    """A connection as the target's provisioner with ``password`` (autocommit)."""
    return pymysql.connect(
        host=target.host,
        port=target.port,
        user=target.provisioner.user,
        password=password,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=CALL_TIMEOUT,
        write_timeout=CALL_TIMEOUT,
        autocommit=True,
    )


def change_own_password(name: str, target: TargetSection, old: str, new: str) -> None:
    try:
        conn = _as_provisioner(target, old)
        try:
            with conn.cursor() as cur:
                cur.execute("SET PASSWORD = %s", (bootstrap.native_password_hash(new),))
        finally:
            conn.close()
    except pymysql.err.Error as exc:
        raise DatabaseError(
            f"rotating the provisioner of '{name}' failed: {exc.args[-1]}"
        ) from None


ACCESS_DENIED = 1045


def logs_in(name: str, target: TargetSection, password: str) -> bool | None:
    """Whether the provisioner logs in with ``password``: True, False (refused: 1045), or
    None when it cannot be told now (the server is unreachable, another error)."""
    try:
        _as_provisioner(target, password).close()
    except pymysql.err.OperationalError as exc:
        return False if exc.args and exc.args[0] == ACCESS_DENIED else None
    except pymysql.err.Error:
        return None
    return True
