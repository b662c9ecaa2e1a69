"""What a caller is shown of a lease: the fields of ``SessionInfo`` (and of the answers
built on it: ``SessionGranted``, ``SessionRenewed``). Never the password."""

from __future__ import annotations

from typing import Any

from dbaccess.broker.store import Lease
from dbaccess.wire import SessionInfo


def session_info(lease: Lease) -> SessionInfo:
    return SessionInfo(**session_fields(lease))


def session_fields(lease: Lease) -> dict[str, Any]:
    return dict(
        id=lease.id,
        target=lease.target,
        role=lease.role,
        engine=lease.engine,
        db_user=lease.db_user,
        state=lease.state,
        created_at=lease.created_at,
        expires_at=lease.expires_at,
        revoked_at=lease.revoked_at,
        reason=lease.reason,
        rule=lease.rule,
        kind=lease.kind,
        incident=lease.incident,
        drill=lease.drill,
    )
