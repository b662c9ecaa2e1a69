"""The TLS parameters of the broker's connections to a PostgreSQL target, beyond sslmode."""

from __future__ import annotations

from dbaccess.broker.settings import TargetSection


def ssl_root(target: TargetSection) -> str | None:
    """libpq's ``sslrootcert``: the target's CA file, or None for libpq's default (psycopg
    leaves a None parameter out)."""
    return None if target.sslrootcert is None else str(target.sslrootcert)
