"""What the CLI sends with every broker call and how it reads a failed answer — shared by
the httpx client (dbaccess/client.py) and the fast exec path (dbaccess/fast_exec.py), so
both report the same error, hint and exit code for the same answer. Standard library only."""

from __future__ import annotations

import json
import platform

from dbaccess import __version__
from dbaccess.errors import (
    AuthError,
    BrokerError,
    DbaccessError,
    DeniedError,
    NotFoundError,
    UsageError,
)

TIMEOUT_SECONDS = 30.0  # for every broker call, whichever HTTP client makes it

# Recorded by the broker in the audit trail next to the source address.
USER_AGENT = (
    f"dbaccess/{__version__} ({platform.system()} {platform.machine()}; "
    f"Python {platform.python_version()})"
)

_BY_STATUS: dict[int, type[DbaccessError]] = {
    400: UsageError,
    401: AuthError,
    403: DeniedError,
    404: NotFoundError,
    409: DeniedError,  # the state forbids it: a used, denied or expired request...
    422: UsageError,
}


def error_from_reply(status: int, body: bytes) -> DbaccessError:
    """The error for a non-2xx answer: the broker's message, hint and code when it sent its
    JSON error envelope, else the status alone."""
    message = f"the broker answered {status}"
    hint = None
    broker_code = None
    try:
        detail = json.loads(body).get("error") or {}
        message = detail.get("message") or message
        hint = detail.get("hint")
        broker_code = detail.get("code")
    except (ValueError, AttributeError):
        pass
    kind = _BY_STATUS.get(status, BrokerError)
    if kind is AuthError and hint is None:
        hint = "dbaccess login"
    error = kind(message, hint=hint)
    error.broker_code = broker_code
    return error
