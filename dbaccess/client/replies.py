"""What the CLI sends with every broker call and how it reads a failed answer — shared by
the httpx client (dbaccess/client/broker_api.py) and the fast exec path
(dbaccess/cli/fast_exec.py), so both report the same error, hint and exit code for the
same answer. Standard library only."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from urllib.parse import urlsplit

from dbaccess import __version__
from dbaccess.errors import (
    AuthError,
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    BrokerUntrusted,
    DatabaseError,
    DbaccessError,
    DeniedError,
    NotFoundError,
    UsageError,
)

DEFAULT_TIMEOUT_SECONDS = 30.0
TIMEOUT_ENV = "DBACCESS_TIMEOUT"
_timeout: float | None = None  # --timeout, once the command line is read


def set_timeout(seconds: float | None) -> None:
    """``--timeout SECONDS`` for every broker call of this process (None: the default)."""
    global _timeout
    _timeout = seconds


def timeout_seconds() -> float:
    """How long one broker call may take, whichever HTTP client makes it: --timeout >
    DBACCESS_TIMEOUT > 30 s. (The CLI checks the variable's value when it reads options.)"""
    if _timeout is not None:
        return _timeout
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        return DEFAULT_TIMEOUT_SECONDS
    return value if value > 0 else DEFAULT_TIMEOUT_SECONDS


TIMEOUT_HEADER = "Dbaccess-Timeout"


def request_headers() -> dict[str, str]:
    """What every broker call sends, whichever HTTP client makes it: the User-Agent, and
    how long this client waits for an answer — so the broker revokes a session it could
    not hand out in time instead of handing a password to a client that has given up
    (broker/services/target_guard.py)."""
    return {
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        TIMEOUT_HEADER: f"{timeout_seconds():g}",
    }


def parse_timeout(raw: str) -> float:
    """A --timeout value: seconds, more than 0 (ValueError otherwise)."""
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{raw!r} is not a number of seconds above 0")
    return value


# Seconds a broker call may take before a spinner (on a terminal) says we wait for it.
SLOW_CALL_SECONDS = 0.4


def waiting_text(method: str, path: str) -> str:
    """What the spinner of a slow broker call says, on either HTTP client."""
    return f"waiting for the broker ({method} {path})"


def no_json(method: str, path: str) -> BrokerError:
    """The error for a 2xx answer that is not JSON."""
    return BrokerError(f"the broker answered {method} {path} with no JSON")


# Wraps every broker call: the CLI shows a spinner when one takes longer than a moment.
waiting: Callable[[str], AbstractContextManager[None]] = lambda _text: nullcontext()  # noqa: E731

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
    429: DeniedError,  # a cap on live sessions (cap_reached): policy, not a failure
}


# The broker's codes for a failure of the target database (dbaccess/broker/services/sessions.py).
_DATABASE_CODES = frozenset({"database_error", "creation_timeout"})


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
    if broker_code in _DATABASE_CODES:
        # The broker is fine; the target database failed (down, refusing, too slow). Any
        # other 502/504 — a proxy in front of the broker — stays a broker error.
        kind = DatabaseError
    if kind is AuthError and hint is None:
        hint = "dbaccess login"
    error = kind(message, hint=hint)
    error.broker_code = broker_code
    return error


def unreachable(base_url: str, exc: BaseException) -> BrokerUnreachable:
    """The error for a broker call that got no answer — from httpx or http.client alike:
    the certificate is not trusted, the name does not resolve, nothing listens, or no
    answer came within the timeout; each says what to check."""
    import socket
    import ssl

    host = urlsplit(base_url).hostname or base_url
    cause = _root_causes(exc)
    untrusted = next((c for c in cause if isinstance(c, ssl.SSLCertVerificationError)), None)
    if untrusted is not None:
        why = untrusted.verify_message or untrusted.reason or "verification failed"
        return BrokerUntrusted(
            f"the broker at {base_url} presented a TLS certificate this machine does not "
            f"trust ({why})",
            hint="if your organisation has its own certificate authority, point "
            "SSL_CERT_FILE at its CA bundle: export SSL_CERT_FILE=/path/to/ca.pem",
        )
    if any(isinstance(c, socket.gaierror) for c in cause):
        return BrokerUnreachable(
            f"cannot reach the broker at {base_url}: the name {host} does not resolve (DNS)",
            hint="check the host name in the URL; to change it: dbaccess login --broker URL",
        )
    if any(isinstance(c, TimeoutError) for c in cause) or type(exc).__name__.endswith("Timeout"):
        seconds = timeout_seconds()
        return BrokerTimeout(
            f"the broker at {base_url} did not answer within {seconds:g} s",
            hint="it may be overloaded or a firewall drops the traffic; try again, or wait "
            "longer with dbaccess --timeout 120 ... (or DBACCESS_TIMEOUT=120)",
        )
    if any(isinstance(c, ConnectionRefusedError) for c in cause):
        return BrokerUnreachable(
            f"cannot reach the broker at {base_url}: connection refused",
            hint="check that the broker runs there and the URL is right; to change it: "
            "dbaccess login --broker URL",
        )
    return BrokerUnreachable(
        f"cannot reach the broker at {base_url}: {exc}",
        hint="check the network and the URL; to change it: dbaccess login --broker URL",
    )


def _root_causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (httpx wraps httpcore, which wraps the OS's)."""
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found
