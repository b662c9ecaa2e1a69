"""``dbaccess exec`` for scripts, without the CLI stack.

Runbooks and CI jobs call ``dbaccess exec`` in loops. Importing typer, pydantic, httpx and
keyring costs ~400 ms on a 2-core machine before any work is done (bench/startup.py), more
than the session itself. When nobody can be asked anything (stdin is not a terminal, or
--no-input) and the invocation is the common one, this module runs the same session with
the standard library and secretstorage:

- argv is read against the same options as the typer command (tests keep the two equal)
  into the same ``SessionRequest``, validated the same way;
- the login is the Secret Service entry keyring wrote (``read_from_secret_service``);
- the broker is called over http.client (``client.stdlib_broker``), with httpx's
  certificate rules, the same --timeout and spinner, and failures become the same errors;
- the session runs through ``client.session.run.run_session``, the one session core of
  connect and exec, with the same lines (``messages``); with --json the one envelope (the
  outcome, or the error) is the last line on stderr, as in the full CLI.

Anything else returns None *before any side effect* and the full CLI runs instead: --help
or --debug, a flag not known here, a login to refresh, a token file, a keyring configured
for another backend, stale session directories to sweep, a proxy, a nested session, or
``DBACCESS_FAST_EXEC=0``. This module only reads argv and wires the parts together.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbaccess.cli.flags import FALSE_WORDS, boolean
from dbaccess.client.session import messages
from dbaccess.errors import DbaccessError, ExitCode, render

if TYPE_CHECKING:
    from dbaccess.client.config import ProfileFile
    from dbaccess.client.session.request import SessionRequest

# The options of ``dbaccess`` and of ``dbaccess exec`` this path understands, by flag.
GLOBAL_VALUES = {"--profile": "profile", "--timeout": "timeout"}
GLOBAL_FLAGS = {"--json": "json", "--no-input": "no_input"}
GLOBAL_ENV = {
    "profile": "DBACCESS_PROFILE",
    "json": "DBACCESS_JSON",
    "no_input": "DBACCESS_NO_INPUT",
    "debug": "DBACCESS_DEBUG",
    "timeout": "DBACCESS_TIMEOUT",
}
EXEC_VALUES = {
    "--role": "role",
    "-r": "role",
    "--duration": "duration",
    "-d": "duration",
    "--reason": "reason",
    "--ticket": "ticket",
    "--request": "request",
}
EXEC_FLAGS = {"--no-wait": "no_wait"}

_JWT = re.compile(r"[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*")  # header-safe


@dataclass
class Invocation:
    """``dbaccess [globals] exec TARGET --role R [options] -- COMMAND...``, parsed."""

    target: str = ""
    command: tuple[str, ...] = ()
    profile: str | None = None
    timeout: str | None = None  # seconds, as given; checked before use
    json: bool = False
    no_input: bool = False
    role: str = ""
    duration: str | None = None
    reason: str | None = None
    ticket: str | None = None
    request: str | None = None
    no_wait: bool = False

    def session_request(self) -> SessionRequest:
        """What the flags ask for, as connect and exec build it (UsageError if refused)."""
        from dbaccess.client.session.request import SessionRequest
        from dbaccess.durations import parse_duration_option

        return SessionRequest(
            target=self.target,
            role=self.role,
            duration=parse_duration_option(self.duration),
            reason=self.reason,
            ticket=self.ticket,
            request_id=self.request,
            wait=not self.no_wait,
            command=self.command,
        ).validate()


def parse(argv: list[str], environ: Mapping[str, str]) -> Invocation | None:
    """The invocation, or None when typer should read it (help, errors, anything unusual)."""
    found = Invocation()
    values = _env_globals(environ)
    if values is None:
        return None
    for name, value in values.items():
        setattr(found, name, value)
    args = list(argv)
    # global options, up to the command name
    while args and args[0] != "exec":
        taken = _take_option(args, found, GLOBAL_VALUES, GLOBAL_FLAGS)
        if not taken:
            return None
    if not args:
        return None
    args.pop(0)
    if "--" not in args:
        return None  # typer reads the command without "--"; keep its rules
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    while options:
        if not options[0].startswith("-"):
            if found.target:
                return None
            found.target = options.pop(0)
            continue
        if not _take_option(options, found, EXEC_VALUES, EXEC_FLAGS):
            return None
    if not found.target or not found.role or not command:
        return None
    if found.timeout is not None:
        from dbaccess.client.replies import parse_timeout

        try:
            parse_timeout(found.timeout)
        except ValueError:
            return None  # typer's error for a bad value
    found.command = tuple(command)
    return found


def _env_globals(environ: Mapping[str, str]) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    for name, variable in GLOBAL_ENV.items():
        raw = environ.get(variable)
        if not raw:
            continue
        if name in ("profile", "timeout"):
            values[name] = raw
            continue
        value = boolean(raw)  # click's words, as typer reads them
        if value is None:
            return None  # typer's error for a bad boolean
        if value:
            if name == "debug":
                return None  # tracebacks: the full CLI
            values[name] = True
    return values


def _take_option(
    args: list[str], into: Invocation, valued: dict[str, str], flags: dict[str, str]
) -> bool:
    """Consume one option from ``args`` into ``into``; False if it is not one we know."""
    head = args.pop(0)
    # click splits "--role=x" but reads "-r=x" as the value "=x": split long options only
    name, equals, inline = head.partition("=") if head.startswith("--") else (head, "", "")
    if name in valued:
        if equals:
            value = inline
        elif args:
            value = args.pop(0)
        else:
            return False
        if value.startswith("-") and not equals:
            return False  # click would read it as a value; be conservative
        setattr(into, valued[name], value)
        return True
    if head in flags:
        setattr(into, flags[head], True)
        return True
    return False


def run(argv: list[str]) -> int | None:
    """Run ``dbaccess exec`` here and return its exit code, or None: use the full CLI."""
    environ = os.environ
    if environ.get("DBACCESS_FAST_EXEC", "").strip().lower() in FALSE_WORDS:
        return None
    if environ.get("DBACCESS_SESSION") or any(
        # httpx (urllib's getproxies) reads *_proxy in any letter case
        value and name.lower().endswith("_proxy") and name.lower() != "no_proxy"
        for name, value in environ.items()
    ):
        return None
    found = parse(argv, environ)
    if found is None or not (found.no_input or not sys.stdin.isatty()):
        return None
    from dbaccess.client.config import ProfileFile

    try:
        profiles = ProfileFile.load()  # once: passed to all that reads a profile
    except DbaccessError:
        return None  # the full CLI reports it the usual way
    if found.timeout is not None:
        from dbaccess.client.replies import parse_timeout, set_timeout

        set_timeout(parse_timeout(found.timeout))
    try:
        return _run(found, profiles)
    except _FullCli:
        return None
    except DbaccessError as exc:
        _report(exc, found, profiles)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


class _FullCli(Exception):
    """Raised before any side effect: the full CLI takes over."""


def _run(found: Invocation, profiles: ProfileFile) -> int:
    from dbaccess.client.auth.token_store import (
        REFRESH_MARGIN,
        read_from_secret_service,
        token_file,
    )
    from dbaccess.client.config import profile_name, resolve_broker
    from dbaccess.client.session.child import Terminated
    from dbaccess.client.session.directory import stale_sessions
    from dbaccess.client.session.grant import Ask
    from dbaccess.client.session.run import Origin, run_session
    from dbaccess.client.stdlib_broker import StdlibBroker

    try:
        profile = profile_name(found.profile, profiles)
        base_url = resolve_broker(profile, profiles=profiles)
        request = found.session_request()
        if token_file(profile, profiles) is not None or stale_sessions():
            raise _FullCli
    except (DbaccessError, ValueError):
        raise _FullCli from None  # the full CLI reports it the usual way
    login = read_from_secret_service(profile)
    if (
        login is None
        or login.expires_at - REFRESH_MARGIN <= time.time()
        or not _JWT.fullmatch(login.id_token)
    ):
        raise _FullCli
    try:
        broker = StdlibBroker(base_url, login.id_token)
    except (ValueError, OSError):
        raise _FullCli from None  # a bad URL or CA file: the full CLI reports it
    report = _Report(found)

    @contextmanager
    def waiting(pending: Any) -> Iterator[None]:
        report.info(messages.needs_approval(pending))
        yield

    try:
        return run_session(
            request,
            lambda: broker,
            report,
            Origin(profile, base_url),
            Ask(waiting=waiting, resume_verb="exec"),
        )
    except Terminated as exc:
        return 128 + exc.signum


class _Report:
    """``run.Report`` in plain text on stderr (stdout is the command's)."""

    markup = messages.PLAIN

    def __init__(self, found: Invocation) -> None:
        self._json = found.json

    def info(self, text: str) -> None:
        if not self._json:
            print(text, file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def outcome(self, data: dict[str, Any]) -> None:
        if self._json:
            _envelope({"data": data})


def _report(exc: DbaccessError, found: Invocation, profiles: ProfileFile | None = None) -> None:
    """As the full CLI (``render``): error/hint lines on stderr, or the JSON envelope — on
    stderr too, since stdout is the command's — with the commands in them naming the
    profile."""
    from dbaccess.client.config import hint_profile

    exc.name_profile(hint_profile(found.profile, profiles))
    render(exc, as_json=found.json, stream=sys.stderr)


def _envelope(envelope: dict[str, Any]) -> None:
    sys.stderr.write(json.dumps(envelope) + "\n")
    sys.stderr.flush()
