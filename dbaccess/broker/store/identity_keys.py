"""The identity provider's last good key set, kept so a restarted broker accepts valid
tokens while the provider is unreachable (dbaccess/broker/keys.py)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dbaccess.broker.store.audit_chain import AuditTrail
from dbaccess.broker.store.schema import identity_keys


class IdentityKeys(AuditTrail):
    """Key sets of identity providers."""

    def load_identity_keys(self, issuer: str) -> tuple[str, dict[str, Any], datetime] | None:
        """The last good key set of ``issuer`` kept by ``save_identity_keys``:
        (jwks_uri, JWKS, fetched_at), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(identity_keys).where(identity_keys.c.issuer == issuer)
            ).first()
        if row is None:
            return None
        return row.jwks_uri, json.loads(row.jwks), row.fetched_at

    def save_identity_keys(
        self, issuer: str, jwks_uri: str, jwks: dict[str, Any], now: datetime
    ) -> None:
        values = {"jwks_uri": jwks_uri, "jwks": json.dumps(jwks, sort_keys=True), "fetched_at": now}
        with self._write() as conn:
            moved = conn.execute(
                identity_keys.update().where(identity_keys.c.issuer == issuer).values(**values)
            ).rowcount
            if not moved:
                conn.execute(identity_keys.insert().values(issuer=issuer, **values))
