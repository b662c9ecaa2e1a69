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

from dbaccess.auth.login import bearer_token
from dbaccess.client import BrokerClient
from dbaccess.errors import DbaccessError, UsageError
from dbaccess.grant import Ask, Want, obtain
from dbaccess.launch import mysql, psql
from dbaccess.launch.child import (
    child_environment,
    cleanup_on_signals,
    ignore_cleanup_signals,
    run_child,
)
from dbaccess.launch.session_dir import SessionDir, stale_sessions
from dbaccess.models import BreakglassCreate, SessionGranted


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
) -> int:
    """Run the client for one session; return its exit code. Always revokes and wipes."""
    if os.environ.get("DBACCESS_SESSION"):
        raise UsageError(
            "this shell already runs inside a dbaccess session",
            hint="exit the current session first (nested sessions are refused)",
        )
    login = bearer_token(request.profile, http)
    api = BrokerClient(request.broker, http, login.id_token)
    sweep_stale_sessions(api, request.broker, on_warning)
    with cleanup_on_signals():
        granted = obtain(api, request.want(), ask or Ask())
        directory: SessionDir | None = None
        try:
            directory = SessionDir.create(
                granted.id, broker=request.broker, profile=request.profile
            )
            argv, env = prepare_client(
                granted,
                directory,
                list(request.client_args),
                request.command,
                request.clients.get(granted.engine),
            )
            on_granted(granted)
            return run_child(argv, child_environment(env, granted.id))
        finally:
            # A second SIGTERM must not cut the clean-up short.
            ignore_cleanup_signals()
            if directory is not None:
                directory.remove()
            until = f"{granted.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            try:
                state = api.revoke_session(granted.id).state
            except DbaccessError as exc:
                on_warning(
                    f"could not revoke session {granted.id} ({exc.message}); it expires at {until}"
                )
            else:
                if state != "revoked":
                    on_warning(
                        f"the broker could not drop {granted.db_user} yet; it keeps "
                        f"retrying, and the user expires at {until}"
                    )


def prepare_client(
    granted: SessionGranted,
    directory: SessionDir,
    args: list[str],
    command: tuple[str, ...] | None = None,
    client: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for the session: the engine's native client with ``args``, or
    any ``command`` (exec) with the same credential files and variables prepared."""
    if granted.engine == "postgres":
        chosen = "" if command else (client or psql.find_psql())
        argv, env = psql.prepare(granted, directory, chosen, args)
    elif granted.engine == "mariadb":
        chosen = "" if command else (client or mysql.find_mysql())
        argv, env = mysql.prepare(granted, directory, chosen, args)
    else:
        raise UsageError(
            f"engine '{granted.engine}' is not supported by this version of dbaccess",
            hint="upgrade dbaccess",
        )
    return (list(command) if command else argv), env


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
