"""``dbaccess exec`` for scripts, without the CLI stack.

Runbooks and CI jobs call ``dbaccess exec`` in loops. Importing typer, pydantic, httpx and
keyring costs ~400 ms on a 2-core machine before any work is done (bench/startup.py), more
than the session itself. When nobody can be asked anything (stdin is not a terminal, or
--no-input) and the invocation is the common one, this module runs the same session with
the standard library and secretstorage:

- argv is read against the same options as the typer command (tests keep the two equal);
- the login is the Secret Service entry keyring wrote (``read_from_secret_service``);
- ``POST /v1/sessions`` and ``DELETE /v1/sessions/{id}`` go over http.client, with httpx's
  certificate rules, the same --timeout and spinner, and failures become the same errors
  (``broker_replies``);
- with --json the one envelope (``outcome.session_outcome``, or the error) is the last
  line on stderr, as in the full CLI: stdout is the command's;
- the session runs through ``launch.session.run_granted``, exactly as connect and exec.

Anything else returns None *before any side effect* and the full CLI runs instead: --help
or --debug, a flag not known here, a login to refresh, a token file, a keyring configured
for another backend, stale session directories to sweep, a proxy, a nested session, or
``DBACCESS_FAST_EXEC=0``. The one case found after the broker acted — a rule that needs
approval — continues with the full client to wait for the approvers.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dbaccess.cli.flags import FALSE_WORDS, boolean
from dbaccess.errors import BrokerError, DbaccessError, ExitCode, render

if TYPE_CHECKING:
    from dbaccess.client.config import ProfileFile

# The options of ``dbaccess`` and of ``dbaccess exec`` this path understands, by flag.
GLOBAL_VALUES = {"--profile": "profile", "--timeout": "timeout"}
GLOBAL_FLAGS = {"--json": "json", "--no-input": "no_input"}
GLOBAL_ENV = {"profile": "DBACCESS_PROFILE", "json": "DBACCESS_JSON",
              "no_input": "DBACCESS_NO_INPUT", "debug": "DBACCESS_DEBUG",
              "timeout": "DBACCESS_TIMEOUT"}
EXEC_VALUES = {"--role": "role", "-r": "role", "--duration": "duration", "-d": "duration",
               "--reason": "reason", "--ticket": "ticket", "--request": "request"}
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
    options, command = args[:split], args[split + 1:]
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


def _take_option(args: list[str], into: Invocation, valued: dict[str, str],
                 flags: dict[str, str]) -> bool:
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


class _Secret:
    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('**********')"


@dataclass(frozen=True)
class GrantedReply:
    """The fields of ``models.SessionGranted`` a session run needs (a test keeps them in
    step with the model)."""

    id: str
    target: str
    role: str
    engine: str
    db_user: str
    host: str
    port: int
    database: str
    expires_at: datetime
    password: _Secret = field(repr=False)
    sslmode: str | None = None
    kind: str = "session"

    @classmethod
    def from_reply(cls, body: dict[str, Any]) -> GrantedReply:
        try:
            return cls(
                id=str(body["id"]), target=str(body["target"]), role=str(body["role"]),
                engine=str(body["engine"]), db_user=str(body["db_user"]),
                host=str(body["host"]), port=int(body["port"]),
                database=str(body["database"]),
                expires_at=datetime.fromisoformat(str(body["expires_at"])),
                password=_Secret(str(body["password"])),
                sslmode=body.get("sslmode"),
                kind=str(body.get("kind") or "session"),
            )
        except (KeyError, TypeError, ValueError):
            raise BrokerError("the broker's answer to POST /v1/sessions is not a session",
                              hint="upgrade dbaccess, or the broker") from None


class Broker:
    """Two calls to the broker over http.client, one connection each (the child may run
    for hours: no idle connection to outlive)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        parts = urlsplit(self.base_url)  # a bad port raises ValueError here, before any call
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path
        self._tls = _tls_context() if parts.scheme == "https" else None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None
             ) -> tuple[int, Any]:
        import http.client

        from dbaccess.client import replies as broker_replies
        from dbaccess.client.replies import USER_AGENT, error_from_reply, unreachable

        headers = {"Accept": "application/json", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {self._token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection: http.client.HTTPConnection
        timeout = broker_replies.timeout_seconds()
        if self._tls is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            with _Spinner(f"waiting for the broker ({method} {path})"):
                connection.request(method, self._prefix + path, body=payload, headers=headers)
                response = connection.getresponse()
                status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.base_url, exc) from None
        finally:
            connection.close()
        if not 200 <= status < 300:
            raise error_from_reply(status, raw)
        try:
            return status, json.loads(raw)
        except ValueError:
            raise BrokerError(f"the broker answered {method} {path} with no JSON") from None

    def revoke(self, session_id: str) -> str:
        return str(self.call("DELETE", f"/v1/sessions/{session_id}")[1].get("state"))


def _tls_context() -> Any:
    """httpx's rule: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


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
    from dbaccess.client.dbclients.programs import find_program
    from dbaccess.client.session.child import Terminated, cleanup_on_signals
    from dbaccess.client.session.directory import stale_sessions
    from dbaccess.client.session.launch import Launch, run_granted
    from dbaccess.durations import parse_duration
    from dbaccess.timestamps import human as human_time

    try:
        profile = profile_name(found.profile, profiles)
        base_url = resolve_broker(profile, profiles=profiles)
        wanted = parse_duration(found.duration) if found.duration else None
        if token_file(profile, profiles) is not None or stale_sessions():
            raise _FullCli
    except (DbaccessError, ValueError):
        raise _FullCli from None  # the full CLI reports it the usual way
    login = read_from_secret_service(profile)
    if (login is None or login.expires_at - REFRESH_MARGIN <= time.time()
            or not _JWT.fullmatch(login.id_token)):
        raise _FullCli
    try:
        broker = Broker(base_url, login.id_token)
    except (ValueError, OSError):
        raise _FullCli from None  # a bad URL or CA file: the full CLI reports it
    # Before the broker is asked, and after the login, in the full CLI's order: a command
    # that is not there fails here the same way.
    find_program(found.command[0], other="give its full path after --")
    ask: dict[str, Any] = {"target": found.target, "role": found.role}
    for name, value in (("duration_seconds", int(wanted.total_seconds()) if wanted else None),
                        ("reason", found.reason), ("ticket", found.ticket),
                        ("request_id", found.request)):
        if value is not None:
            ask[name] = value
    ran: list[Any] = []
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        _warn(text)

    def on_granted(granted: Any) -> None:
        ran.append(granted)
        _info(found, f"dbaccess: connected as {granted.db_user} to {granted.target} "
              f"({granted.role}), valid until {human_time(granted.expires_at)}")

    try:
        with cleanup_on_signals():
            try:
                status, body = broker.call("POST", "/v1/sessions", ask)
            except DbaccessError as exc:
                if exc.broker_code != "request_pending" or not found.request:
                    raise
                # --request names a request still waiting (resumed after Ctrl-C): wait.
                from urllib.parse import quote

                status, body = broker.call("GET", f"/v1/requests/{quote(found.request, safe='')}")
                status = 202
            granted: Any
            if status == 202 and "password" not in body:
                granted = _after_approval(found, base_url, login.id_token, body)
            else:
                granted = _read_grant(broker, body)
            code = run_granted(
                granted,
                Launch(profile=profile, broker=base_url, command=found.command),
                revoke=broker.revoke,
                on_granted=on_granted,
                on_warning=warn,
            )
    except Terminated as exc:
        return 128 + exc.signum
    _info(found, "dbaccess: session revoked, local files removed")
    if found.json and ran:
        from dbaccess.client.session.outcome import session_outcome

        _envelope({"data": session_outcome(ran[0], code, warnings)})
    return code


def _read_grant(broker: Broker, body: dict[str, Any]) -> GrantedReply:
    """The session in a 201 answer; if the answer cannot be read, the session it names is
    revoked before the error is reported."""
    try:
        return GrantedReply.from_reply(body)
    except BrokerError:
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            try:
                broker.revoke(body["id"])
            except DbaccessError:
                pass  # it expires on the broker's clock
        raise


def _after_approval(found: Invocation, base_url: str, token: str, body: dict[str, Any]) -> Any:
    """A rule that needs approvers: the request is open. Wait for it (or, with --no-wait,
    stop with its id) through the full client — rare enough not to need speed."""
    from dbaccess.client import context as api
    from dbaccess.client.broker_api import BrokerClient
    from dbaccess.client.session.grant import Ask, Want, obtain, once_approved
    from dbaccess.wire import RequestInfo

    request = RequestInfo.model_validate(body)
    want = Want(target=found.target, role=found.role, wait=not found.no_wait)
    if want.wait:
        _info(found, f"dbaccess: request {request.id} needs {request.approvals_required} "
              f"approval(s) from {', '.join(request.approver_groups)}; approvers run: "
              f"dbaccess approve {request.id}")
    with api.http_client() as http:
        client = BrokerClient(base_url, http, token)
        ask = Ask(resume_verb="exec")
        return obtain(client, once_approved(client, request, want, ask), ask)


def _info(found: Invocation, text: str) -> None:
    if not found.json:
        print(text, file=sys.stderr, flush=True)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


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


class _Spinner:
    """The full CLI's spinner for a slow broker call, in plain ANSI on a terminal's
    stderr: frames after SLOW_CALL_SECONDS, the line wiped when the call ends."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, text: str) -> None:
        self._text = text
        self._done: Any = None
        self._thread: Any = None

    def __enter__(self) -> None:
        if not sys.stderr.isatty():
            return
        import threading

        self._done = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from dbaccess.client.replies import SLOW_CALL_SECONDS

        if self._done.wait(SLOW_CALL_SECONDS):
            return
        shown = False
        for tick in range(1_000_000):
            frame = self.FRAMES[tick % len(self.FRAMES)]
            sys.stderr.write(f"\r{frame} {self._text}")
            sys.stderr.flush()
            shown = True
            if self._done.wait(0.1):
                break
        if shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._done.set()
            self._thread.join()
