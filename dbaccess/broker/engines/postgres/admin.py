"""What an operator's commands do on a PostgreSQL target, apart from the broker's own calls:
apply the bootstrap as a superuser (``dbaccess-broker bootstrap --apply``) and change the
provisioner's own password (``rotate-credential``). Both send a password only as a SCRAM
verifier, never in the clear."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from dbaccess.broker.engines.base import CALL_TIMEOUT, CONNECT_TIMEOUT
from dbaccess.broker.engines.deadline import WATCHDOG
from dbaccess.broker.engines.postgres import bootstrap
from dbaccess.broker.engines.postgres.tls import ssl_root
from dbaccess.broker.settings import TargetSection
from dbaccess.errors import DatabaseError

# what DBACCESS_ADMIN_DSN looks like (the hint when it is not set)
ADMIN_DSN_EXAMPLE = "'host=... user=postgres' (PostgreSQL)"


def apply_bootstrap(name: str, target: TargetSection, admin_dsn: str, password: str) -> list[str]:
    """Run the bootstrap through ``admin_dsn`` (a superuser); what the operator should
    know after (nothing, on PostgreSQL)."""
    try:
        with psycopg.connect(admin_dsn, dbname=target.database, autocommit=True) as admin:
            bootstrap.apply(target, admin, password)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseError(f"bootstrap of '{name}' failed: {first}") from None
    return []


def _as_provisioner(target: TargetSection, password: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection as the target's provisioner with ``password`` (autocommit)."""
    return psycopg.connect(
        host=target.host,
        port=target.port,
        dbname=target.database,
        user=target.provisioner.user,
        password=password,
        sslmode=target.sslmode,
        sslrootcert=ssl_root(target),
        connect_timeout=int(CONNECT_TIMEOUT),
        autocommit=True,
    )


def change_own_password(name: str, target: TargetSection, old: str, new: str) -> None:
    user = target.provisioner.user
    try:
        with (
            WATCHDOG.watch(CALL_TIMEOUT) as deadline,
            _as_provisioner(target, old) as conn,
        ):
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


def logs_in(name: str, target: TargetSection, password: str) -> bool | None:
    """Whether the provisioner logs in with ``password``: True, False (refused: 28P01), or
    None when it cannot be told now (the server is unreachable, another error)."""
    try:
        with (
            WATCHDOG.watch(CALL_TIMEOUT) as deadline,
            _as_provisioner(target, password) as conn,
        ):
            deadline.attach(conn)
            return True
    except psycopg.OperationalError as exc:
        refused = exc.sqlstate == "28P01" or "password authentication failed" in str(exc)
        return False if refused else None
    except psycopg.Error:
        return None
