"""``connect``: get a session from the broker, run a native client with it, clean up.

Order matters: signal handlers are in place before the session exists, so SIGTERM or SIGHUP
at any point unwinds through the ``finally`` that wipes the session directory and revokes
the session on the broker. After a SIGKILL the broker's expiry is the backstop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import httpx

from dbaccess.client import name_cache
from dbaccess.client.auth.login import bearer_token
from dbaccess.client.broker_api import BrokerClient
from dbaccess.client.config import ProfileFile
from dbaccess.client.dbclients.programs import find_program
from dbaccess.client.session.child import cleanup_on_signals
from dbaccess.client.session.directory import stale_sessions
from dbaccess.client.session.grant import Ask, Want, obtain
from dbaccess.client.session.launch import ENGINES, Launch, find_client, run_granted
from dbaccess.errors import DbaccessError, LaunchError, UsageError
from dbaccess.wire import BreakglassCreate, SessionGranted


@dataclass(frozen=True)
class ConnectRequest:
    profile: str
    broker: str
    target: str
    role: str
    duration: timedelta | None = None
    reason: str | None = None
    ticket: str | None = None
    client_args: tuple[str, ...] = ()
    # exec: run this command instead of the native client, with the same credentials
    command: tuple[str, ...] | None = None
    # engine -> client program chosen by flag or profile (psql, pgcli, mariadb, mycli...)
    clients: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None  # redeem an approved request
    wait: bool = True  # wait for approvers; False: exit 'approval pending' at once
    breakglass: BreakglassCreate | None = None

    def want(self) -> Want:
        return Want(
            target=self.target,
            role=self.role,
            duration=self.duration,
            reason=self.reason,
            ticket=self.ticket,
            request_id=self.request_id,
            wait=self.wait,
            breakglass=self.breakglass,
        )


def connect(
    request: ConnectRequest,
    http: httpx.Client,
    on_granted: Callable[[SessionGranted], None] = lambda _: None,
    on_warning: Callable[[str], None] = lambda _: None,
    ask: Ask | None = None,
    profiles: ProfileFile | None = None,
) -> int:
    """Run the client for one session; return its exit code. Always revokes and wipes.
    ``profiles``: the invocation's config.toml (None reads it)."""
    if os.environ.get("DBACCESS_SESSION"):
        raise UsageError(
            "this shell already runs inside a dbaccess session",
            hint="exit the current session first (nested sessions are refused)",
        )
    login = bearer_token(request.profile, http, profiles=profiles)
    api = BrokerClient(request.broker, http, login.id_token)
    sweep_stale_sessions(api, request.broker, on_warning)
    clients = find_programs(request, api)
    with cleanup_on_signals():
        granted = obtain(api, request.want(), ask or Ask())
        launch = Launch(
            profile=request.profile,
            broker=request.broker,
            client_args=request.client_args,
            command=request.command,
            client=clients.get(granted.engine),
        )
        return run_granted(
            granted,
            launch,
            revoke=lambda session_id: api.revoke_session(session_id).state,
            on_granted=on_granted,
            on_warning=on_warning,
        )


def find_programs(request: ConnectRequest, api: BrokerClient) -> dict[str, str]:
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
            found[engine] = find_client(engine, request.clients.get(engine))
        except LaunchError as exc:
            missing[engine] = exc
    if not missing:
        return found
    remembered = name_cache.remembered_engine(request.profile, request.target)
    if remembered in found:
        return found  # its client is here; were the memory stale, the answer's engine decides
    if request.breakglass is not None:
        known = api.breakglass_policy().engines.get(request.target)
        engines = {known} if known else set()
    else:
        allowed = api.targets()
        name_cache.remember_targets(request.profile, allowed)
        engines = {t.engine for t in allowed if t.target == request.target}
    for engine in engines & missing.keys():
        raise missing[engine]
    if not engines and len(missing) == len(ENGINES):  # whatever the engine, none is there
        errors = list(missing.values())
        if len({e.message for e in errors}) == 1:
            raise errors[0]
        raise LaunchError("; ".join(e.message for e in errors),
                          hint="; ".join(dict.fromkeys(e.hint for e in errors if e.hint)))
    return found


def sweep_stale_sessions(api: BrokerClient, broker: str, on_warning: Callable[[str], None]) -> None:
    """Finish the clean-up of sessions whose dbaccess process died without it."""
    for directory, owner in stale_sessions():
        directory.remove()
        session = owner.get("session")
        if isinstance(session, str) and owner.get("broker") == broker:
            try:
                api.revoke_session(session)
            except DbaccessError as exc:
                on_warning(f"could not revoke leftover session {session}: {exc.message}")
