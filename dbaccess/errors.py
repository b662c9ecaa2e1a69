"""The one exception tree of dbaccess, and the documented exit codes.

::

    DbaccessError                 every expected failure; carries an exit code and a hint
    +-- UsageError                bad flags or arguments                      (USAGE)
    +-- ConfigError               a profile or config file is wrong           (CONFIG)
    +-- AuthError                 not logged in, session expired, login failed (NOT_LOGGED_IN)
    +-- KeyringUnavailable        no keyring backend to keep tokens in        (CONFIG)
    +-- DeniedError               the broker's policy said no                 (DENIED)
    +-- ApprovalPending           a request waits for approvers               (APPROVAL_PENDING)
    +-- BrokerUnreachable         the broker cannot be reached                (BROKER_UNREACHABLE)
    |   +-- BrokerUntrusted       its TLS certificate is not trusted here
    |   +-- BrokerTimeout         it did not answer within --timeout
    +-- BrokerError               the broker answered with an error           (BROKER_ERROR)
    +-- DatabaseError             the target database failed                  (DATABASE_ERROR)
    +-- LaunchError               the native client could not be started      (LAUNCH)
    +-- NotFoundError             the named thing does not exist              (NOT_FOUND)

Messages never contain a secret: they are printed and may be logged. :func:`render` is
the one printer of an error — the full CLI, the fast exec path and ``dbaccess-broker``
use it; the exit codes are documented in docs/user-guide.md#exit-codes (a test keeps
that table equal to :class:`ExitCode`).
"""

from __future__ import annotations

import json
import os
import re
from enum import IntEnum
from typing import IO

# The commands a hint may name; "dbaccess <one of these>" gets the profile inserted.
_COMMANDS = (
    "login logout whoami targets connect exec sessions revoke renew creds breakglass "
    "requests approve deny withdraw review audit inventory version profiles tunnel"
).split()
_COMMAND_IN_TEXT = re.compile(rf"\bdbaccess (?=(?:{'|'.join(_COMMANDS)})\b)")


class ExitCode(IntEnum):
    """Stable exit codes (docs/user-guide.md#exit-codes). ``connect``, ``exec`` and
    ``breakglass`` return the child's own code; 128+N after signal N."""

    OK = 0
    ERROR = 1
    USAGE = 2
    CONFIG = 3
    NOT_LOGGED_IN = 4
    DENIED = 5
    APPROVAL_PENDING = 6
    BROKER_UNREACHABLE = 7
    BROKER_ERROR = 8
    DATABASE_ERROR = 9
    LAUNCH = 10
    NOT_FOUND = 11
    FINDINGS = 12  # inventory: a standing account no allow entry names (for CI and cron)
    INTERRUPTED = 130


class DbaccessError(Exception):
    """Base of every expected failure: a message, an exit code and a hint (the next command)."""

    exit_code: ExitCode = ExitCode.ERROR
    code: str = "error"
    # The broker's own error code when the error came from an API answer (e.g.
    # "reason_required", "target_required"), for callers that act on it.
    broker_code: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_json(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def name_profile(self, profile: str | None) -> None:
        """Make the commands in the message and hint name ``profile`` (``dbaccess login``
        -> ``dbaccess --profile prod login``), so they can be copied as they are. Hints
        come from everywhere (the broker too), so this is done once, when reporting."""
        self.message = with_profile(self.message, profile)
        if self.hint:
            self.hint = with_profile(self.hint, profile)


def with_profile(text: str, profile: str | None) -> str:
    """``text`` with each ``dbaccess <command>`` in it naming ``profile`` (None: as is)."""
    if not profile:
        return text
    return _COMMAND_IN_TEXT.sub(f"dbaccess --profile {profile} ", text)


def render(exc: DbaccessError, *, as_json: bool, stream: IO[str]) -> None:
    """Report ``exc`` on ``stream``: ``error: ...`` and ``hint: ...`` lines, or with
    ``as_json`` the one envelope ``{"error": {code, message, hint}}`` as one line. Messages
    quote what people and policies wrote: control characters are shown escaped. On a
    terminal the two labels are coloured as rich would (NO_COLOR, TERM=dumb: plain)."""
    from dbaccess.text import printable

    if as_json:
        stream.write(json.dumps({"error": exc.to_json()}) + "\n")
    else:
        error, hint, plain = (
            ("\x1b[1;31m", "\x1b[2m", "\x1b[0m") if _coloured(stream) else ("", "", "")
        )
        stream.write(f"{error}error:{plain} {printable(exc.message)}\n")
        if exc.hint:
            stream.write(f"{hint}hint:{plain} {printable(exc.hint)}\n")
    stream.flush()


def _coloured(stream: IO[str]) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM", "") in ("dumb", "unknown"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class UsageError(DbaccessError):
    exit_code = ExitCode.USAGE
    code = "usage"


class ConfigError(DbaccessError):
    exit_code = ExitCode.CONFIG
    code = "config"


class AuthError(DbaccessError):
    exit_code = ExitCode.NOT_LOGGED_IN
    code = "not_logged_in"


class KeyringUnavailable(DbaccessError):
    exit_code = ExitCode.CONFIG
    code = "no_keyring"


class DeniedError(DbaccessError):
    exit_code = ExitCode.DENIED
    code = "denied"


class ApprovalPending(DbaccessError):
    exit_code = ExitCode.APPROVAL_PENDING
    code = "approval_pending"


class BrokerUnreachable(DbaccessError):
    exit_code = ExitCode.BROKER_UNREACHABLE
    code = "broker_unreachable"


class BrokerUntrusted(BrokerUnreachable):
    code = "broker_untrusted"


class BrokerTimeout(BrokerUnreachable):
    code = "broker_timeout"


class BrokerError(DbaccessError):
    exit_code = ExitCode.BROKER_ERROR
    code = "broker_error"


class DatabaseError(DbaccessError):
    exit_code = ExitCode.DATABASE_ERROR
    code = "database_error"


class LaunchError(DbaccessError):
    exit_code = ExitCode.LAUNCH
    code = "launch_failed"


class NotFoundError(DbaccessError):
    exit_code = ExitCode.NOT_FOUND
    code = "not_found"
