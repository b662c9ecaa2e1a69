"""Rotating the provisioner's password — the broker's only long-lived secret.

The provisioner changes its *own* password (no admin needed), sending only a hash, and
the new password is written where the configuration points (a 0600 file). The order
keeps a crash recoverable: the new password is first written to ``<file>.new``, then
changed in the database, then moved over the old file. If the broker dies between the
last two steps, ``<file>.new`` holds the password in force.
"""

from __future__ import annotations

import time
from datetime import timedelta

from dbaccess.broker.secrets import new_password
from dbaccess.broker.settings import TargetSection
from dbaccess.errors import ConfigError, DatabaseError


def rotate(name: str, target: TargetSection) -> None:
    file = target.provisioner.password_file
    if file is None:
        raise ConfigError(
            f"target '{name}' reads its provisioner password from "
            f"${target.provisioner.password_env}; rotation needs password_file",
            hint=f'set provisioner = {{ user = "...", password_file = "{name}.pw" }}',
        )
    secret = target.provisioner.password
    new = new_password()
    secret.stage(new)
    try:
        _change_own_password(name, target, new)
    except BaseException:
        secret.discard_staged()
        raise
    secret.commit_staged()


def due(target: TargetSection, every: timedelta) -> bool:
    file = target.provisioner.password_file
    if file is None or not file.exists():
        return False
    return time.time() - file.stat().st_mtime >= every.total_seconds()


def _change_own_password(name: str, target: TargetSection, new: str) -> None:
    old = target.provisioner.read_password()
    user = target.provisioner.user
    if target.engine == "postgres":
        import psycopg
        from psycopg import sql

        from dbaccess.broker.engines.base import CALL_TIMEOUT, CONNECT_TIMEOUT
        from dbaccess.broker.engines.deadline import WATCHDOG

        try:
            with WATCHDOG.watch(CALL_TIMEOUT) as deadline, psycopg.connect(
                host=target.host,
                port=target.port,
                dbname=target.database,
                user=user,
                password=old,
                sslmode=target.sslmode,
                connect_timeout=int(CONNECT_TIMEOUT),
                autocommit=True,
            ) as conn:
                deadline.attach(conn)  # a stopped server would hold the call forever
                verifier = conn.pgconn.encrypt_password(
                    new.encode(), user.encode(), b"scram-sha-256"
                ).decode()
                conn.execute(
                    sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(verifier))
                )
        except psycopg.Error as exc:
            raise DatabaseError(
                f"rotating the provisioner of '{name}' failed: {str(exc).strip().splitlines()[0]}"
            ) from None
        return
    import pymysql

    from dbaccess.broker.engines.base import CALL_TIMEOUT, CONNECT_TIMEOUT
    from dbaccess.broker.engines.mariadb.bootstrap import native_password_hash

    try:
        conn = pymysql.connect(
            host=target.host,
            port=target.port,
            user=user,
            password=old,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=CALL_TIMEOUT,
            write_timeout=CALL_TIMEOUT,
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SET PASSWORD = %s", (native_password_hash(new),))
        finally:
            conn.close()
    except pymysql.err.Error as exc:
        raise DatabaseError(
            f"rotating the provisioner of '{name}' failed: {exc.args[-1]}"
        ) from None


__all__ = ["due", "rotate"]
