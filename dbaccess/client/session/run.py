"""One session, start to end: get it from the broker, run a native client (or exec's
command) with it, clean up. The one flow of ``connect``, ``exec`` and ``breakglass`` in
the full CLI and of the fast exec path; they differ in the broker's transport (httpx or
the standard library: ``grant.SessionBroker``) and in how they print (``Report``), not in
what happens or what is said (``messages``). Standard library only.

Order matters: signal handlers are in place before the session exists, so SIGTERM or SIGHUP
at any point unwinds through the ``finally`` that wipes the session directory and revokes
the session on the broker. After a SIGKILL the broker's expiry is the backstop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dbaccess.client.dbclients.programs import find_program
from dbaccess.client.session import messages
from dbaccess.client.session.child import cleanup_on_signals
from dbaccess.client.session.directory import stale_sessions
from dbaccess.client.session.grant import Ask, obtain
from dbaccess.client.session.launch import ENGINES, Launch, find_client, run_granted
from dbaccess.client.session.outcome import session_outcome
from dbaccess.client.session.request import SessionRequest
from dbaccess.errors import DbaccessError, LaunchError, UsageError

if TYPE_CHECKING:
    from dbaccess.client.session.grant import SessionBroker


@dataclass(frozen=True)
class Origin:
    """Where the session comes from: the profile, its broker, the clients it chose."""

    profile: str
    broker: str
    # engine -> client program chosen by flag or profile (psql, pgcli, mariadb, mycli...)
    clients: Mapping[str, str] = field(default_factory=dict)


if TYPE_CHECKING:  # types only: Protocol classes cost start-up

    class Report(Protocol):
        """How a front end prints: lines (``messages``), warnings, and the --json outcome."""

        @property
        def markup(self) -> messages.Markup: ...

        def info(self, text: str) -> None: ...

        def warn(self, text: str) -> None: ...

        def outcome(self, data: dict[str, Any]) -> None: ...


def run_session(
    request: SessionRequest,
    broker: Callable[[], SessionBroker],
    report: Report,
    origin: Origin,
    ask: Ask,
) -> int:
    """Run the client (or command) for one session; return its exit code. Always revokes
    and wipes. ``request`` is validated; ``broker()`` logs in (after the nested-session
    check, as before any other work)."""
    if os.environ.get("DBACCESS_SESSION"):
        raise UsageError(
            "this shell already runs inside a dbaccess session",
            hint="exit the current session first (nested sessions are refused)",
        )
    api = broker()
    warnings: list[str] = []
    ran: list[Any] = []

    def warn(text: str) -> None:
        warnings.append(text)
        report.warn(text)

    def on_granted(granted: Any) -> None:
        ran.append(granted)
        if getattr(granted, "kind", "session") == "breakglass":
            report.warn(messages.breakglass_opened(granted))
        report.info(messages.connected(granted, report.markup))

    sweep_stale_sessions(api, origin.broker, warn)
    clients = find_programs(request, origin, api)
    with cleanup_on_signals():
        granted = obtain(api, request, ask)
        launch = Launch(
            profile=origin.profile,
            broker=origin.broker,
            client_args=request.client_args,
            command=request.command,
            client=clients.get(granted.engine),
        )
        code = run_granted(
            granted, launch, revoke=api.revoke, on_granted=on_granted, on_warning=warn
        )
    report.info(messages.session_ended(report.markup))
    if ran:
        report.outcome(session_outcome(ran[0], code, warnings))
    return code


def find_programs(request: SessionRequest, origin: Origin, api: SessionBroker) -> dict[str, str]:
    """Check, before the broker creates anything, that what will run is there: exec's
    command, or the client of the target's engine. Returns engine -> client path.

    The engine is the broker's to know; it is asked (``GET /v1/targets``, or for break-glass
    ``GET /v1/breakglass``) only when a client is missing for some engine but not for all,
    and the engines it names are remembered: a later connect to a target whose client is
    here asks nothing. A missing client is only reported on the broker's word.
    A target neither shows is let through: the broker's answer names its engine, and a
    missing client then ends the session at once (revoked, nothing left behind)."""
    if request.command:
        find_program(request.command[0], other="give its full path after --")
        return {}
    found: dict[str, str] = {}
    missing: dict[str, LaunchError] = {}
    for engine in ENGINES:
        try:
            found[engine] = find_client(engine, origin.clients.get(engine))
        except LaunchError as exc:
            missing[engine] = exc
    if not missing:
        return found
    from dbaccess.client import name_cache  # connect's missing client only

    remembered = name_cache.remembered_engine(origin.profile, request.target)
    if remembered in found:
        return found  # its client is here; were the memory stale, the answer's engine decides
    if request.breakglass:
        known = api.breakglass_policy().engines.get(request.target)
        engines = {known} if known else set()
    else:
        allowed = api.targets()
        name_cache.remember_targets(origin.profile, allowed)
        engines = {t.engine for t in allowed if t.target == request.target}
    for engine in engines & missing.keys():
        raise missing[engine]
    if not engines and len(missing) == len(ENGINES):  # whatever the engine, none is there
        errors = list(missing.values())
        if len({e.message for e in errors}) == 1:
            raise errors[0]
        raise LaunchError(
            "; ".join(e.message for e in errors),
            hint="; ".join(dict.fromkeys(e.hint for e in errors if e.hint)),
        )
    return found


def sweep_stale_sessions(
    api: SessionBroker, broker: str, on_warning: Callable[[str], None]
) -> None:
    """Finish the clean-up of sessions whose dbaccess process died without it."""
    for directory, owner in stale_sessions():
        directory.remove()
        session = owner.get("session")
        if isinstance(session, str) and owner.get("broker") == broker:
            try:
                api.revoke(session)
            except DbaccessError as exc:
                on_warning(f"could not revoke leftover session {session}: {exc.message}")
