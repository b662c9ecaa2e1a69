"""What ``connect``, ``exec`` and ``breakglass`` report with --json once the session is
over — built here for both exec paths (standard library only), so they agree.

Their stdout belongs to the child (``exec ... -- pg_dump > dump.sql``), so this envelope,
like their errors, is written as the last line on stderr."""

from __future__ import annotations

from typing import Any

from dbaccess.timestamps import rfc3339


def session_outcome(granted: Any, exit_code: int, warnings: list[str]) -> dict[str, Any]:
    """The ``data`` of the envelope: which session ran, until when it was valid, the
    child's exit code (also dbaccess's own), and any warning about its clean-up."""
    return {
        "id": granted.id,
        "kind": getattr(granted, "kind", "session"),
        "target": granted.target,
        "role": granted.role,
        "engine": granted.engine,
        "db_user": granted.db_user,
        "expires_at": rfc3339(granted.expires_at),
        "exit_code": exit_code,
        "warnings": list(warnings),
    }
