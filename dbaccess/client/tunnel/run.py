"""``dbaccess tunnel`` from start to end: listen on loopback, get the first session, say
what to paste into the GUI, serve until Ctrl-C/SIGTERM/SIGHUP, revoke every session the
tunnel obtained. No terminal code: the CLI passes in how to print (``TunnelReport``).

Order matters: the port is taken before the broker is asked (a busy port costs no
session), and signal handlers are in place before the first session exists, so any way
out goes through the ``finally`` that revokes.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dbaccess.client.session.child import cleanup_on_signals
from dbaccess.client.session.grant import Ask, obtain
from dbaccess.client.session.request import SessionRequest
from dbaccess.client.tunnel.keeper import Held, SessionKeeper
from dbaccess.client.tunnel.postgres import LocalLogin, Tunnel
from dbaccess.client.tunnel.secret import local_secret, secret_path
from dbaccess.errors import DbaccessError, UsageError

if TYPE_CHECKING:
    from dbaccess.client.session.grant import SessionBroker

LOOPBACK = "127.0.0.1"  # never a wildcard: other machines must not reach the tunnel
DEFAULT_PORT = 15432
LOCAL_USER = "dbaccess"  # the same for every tunnel, session and restart: GUIs save it
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CLOCK_SLACK = timedelta(minutes=1)  # how far the broker's clock may lag ours


@dataclass(frozen=True)
class TunnelSetup:
    request: SessionRequest  # validated
    profile: str
    port: int = DEFAULT_PORT


class TunnelReport(Protocol):
    """How the front end prints: plain text (it escapes what it shows), and the settings."""

    def info(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def ready(self, settings: dict[str, Any]) -> None:
        """What to paste into the GUI (``paste_settings``), once, when the tunnel serves."""


def listen(port: int) -> socket.socket:
    """The tunnel's socket on 127.0.0.1, or a UsageError saying the port is taken."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port: {port} is not a TCP port (1-65535)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # a previous tunnel's closed connections (TIME_WAIT) must not keep the port from us;
    # on Linux this never lets two sockets listen on one port
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {LOOPBACK} is already in use (another tunnel, or a local "
                "PostgreSQL?)",
                hint=f"pick another: --port {port + 1}; or see what holds it: "
                f"ss -ltnp 'sport = :{port}'",
            ) from None
        raise UsageError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def paste_settings(
    setup: TunnelSetup, port: int, database: str, secret: str, secret_file: Path
) -> dict[str, Any]:
    """The GUI's connection settings. ``password`` is the tunnel's local secret, never the
    gateway's session secret."""
    return {
        "target": setup.request.target,
        "role": setup.request.role,
        "host": LOOPBACK,
        "port": port,
        "database": database,
        "user": LOCAL_USER,
        "password": secret,
        "password_file": str(secret_file),
        "sslmode": "disable",
        "jdbc_url": f"jdbc:postgresql://{LOOPBACK}:{port}/{database}?sslmode=disable",
        "psql": f"psql 'host={LOOPBACK} port={port} dbname={database} user={LOCAL_USER} "
        "sslmode=disable'",
    }


def later_request(first: SessionRequest, reason: str | None) -> SessionRequest:
    """What re-obtains a session while the tunnel serves: the first request's terms, with
    the reason the person gave, without the approved request it redeemed (spent), and
    without waiting: a GUI connection cannot wait for approvers — it is refused naming the
    request, and the first connection after the approval redeems it."""
    return replace(first, request_id=None, wait=False, reason=reason or first.reason).validate()


def run_tunnel(
    setup: TunnelSetup,
    broker: Callable[[], SessionBroker],
    report: TunnelReport,
    ask: Ask,
) -> int:
    """Serve until stopped; revoke what was obtained; 0. ``broker()`` logs in (refreshing
    the token when needed) and is called again for each session."""
    secret_file = secret_path(setup.profile, setup.request.target, setup.request.role)
    secret = local_secret(secret_file)
    sock = listen(setup.port)
    port = int(sock.getsockname()[1])
    given: list[str] = []

    def remembered_reason(why: str) -> str:
        assert ask.reason is not None
        answer = ask.reason(why)
        given.append(answer)
        return answer

    first_ask = replace(ask, reason=remembered_reason) if ask.reason is not None else ask
    later: list[SessionRequest] = []

    def obtain_again() -> Any:
        return obtain(broker(), later[0], Ask())

    keeper = SessionKeeper(obtain_again, on_new=lambda held: report.info(_opened(held)))
    with cleanup_on_signals():
        try:
            granted = obtain(broker(), setup.request, first_ask)
            keeper.adopt(granted)
            later.append(later_request(setup.request, given[-1] if given else None))
            if getattr(granted, "access", "direct") != "gateway":
                raise UsageError(
                    f"{setup.request.target} is not reached through the gateway; the tunnel "
                    "serves gateway targets only",
                    hint=f"for a direct target: dbaccess creds {setup.request.target} "
                    f"--role {setup.request.role} --reveal",
                )
            login = LocalLogin.for_secret(LOCAL_USER, granted.database, secret)
            settings = paste_settings(setup, port, granted.database, secret, secret_file)
            tunnel = Tunnel(login, keeper, warn=report.warn)
            asyncio.run(_serve(sock, tunnel, lambda: report.ready(settings)))
        finally:
            sock.close()
            _revoke_all(broker, keeper.obtained, report)
    return 0


async def _serve(sock: socket.socket, tunnel: Tunnel, ready: Callable[[], None]) -> None:
    """Serve until a stop signal; ``ready`` once the signals are ours and the server is up
    (told earlier, a script's Ctrl-C could come before the handlers)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(tunnel.handle, sock=sock)
    try:
        ready()
        await stop.wait()
    finally:
        server.close()
        await tunnel.aclose()
        await server.wait_closed()
        # removing the loop's handler puts back SIGTERM's default, which kills: blocked
        # until ignored, since the revocations come first (_revoke_all)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _opened(held: Held) -> str:
    from dbaccess.timestamps import human as human_time

    return f"session {held.id} ({held.granted.db_user}) until {human_time(held.expires_at)}"


def _revoke_all(
    broker: Callable[[], SessionBroker], obtained: list[Held], report: TunnelReport
) -> None:
    """Revoke each session, however the tunnel ended; signals wait until it is done. A
    session past its end (by a clock a little behind ours) is over already: a tunnel that
    ran for a week does not call the broker for each of its hours."""
    # blocked while swapped, one signal at a time: none lands between two swaps
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        api: SessionBroker | None = None
        over = datetime.now(UTC) - CLOCK_SLACK
        for held in obtained:
            if held.expires_at < over:
                continue
            try:
                api = api or broker()
                api.revoke(held.id)
                report.info(f"session {held.id} revoked")
            except DbaccessError as exc:
                report.warn(f"could not revoke session {held.id}: {exc.message}")
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
