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
from dbaccess.launch.child import cleanup_on_signals
from dbaccess.launch.session import Launch, run_granted
from dbaccess.launch.session_dir import stale_sessions
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
        launch = Launch(
            profile=request.profile,
            broker=request.broker,
            client_args=request.client_args,
            command=request.command,
            client=request.clients.get(granted.engine),
        )
        return run_granted(
            granted,
            launch,
            revoke=lambda session_id: api.revoke_session(session_id).state,
            on_granted=on_granted,
            on_warning=on_warning,
        )


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
