"""``dbaccess tunnel``: a stable local port for GUI clients (DBeaver, DataGrip) in front of
a gateway target; sessions are obtained, re-obtained and revoked behind it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from dbaccess.cli.options import (
    Duration,
    NoWait,
    Reason,
    RequestId,
    Role,
    Target,
    Ticket,
    session_request,
)
from dbaccess.cli.output import Globals, shown


def tunnel(
    ctx: typer.Context,
    target: Target,
    role: Role,
    port: Annotated[
        int, typer.Option("--port", "-p", help="Local port on 127.0.0.1 for the GUI.")
    ] = 15432,
    duration: Duration = None,
    reason: Reason = None,
    ticket: Ticket = None,
    request_id: RequestId = None,
    no_wait: NoWait = False,
) -> None:
    """Listen on 127.0.0.1 for GUI clients and forward them to the gateway, until Ctrl-C.

    The GUI logs in with a fixed user name and a local secret (made once, kept in a
    private file, printed here); the tunnel gets sessions from the broker as they are
    needed (a new one when the last has ended) and revokes them all when it stops.
    """
    from dataclasses import replace

    from dbaccess.cli.connect import asker
    from dbaccess.client import context as api
    from dbaccess.client.auth.login import bearer_token
    from dbaccess.client.broker_api import BrokerClient
    from dbaccess.client.config import resolve_broker
    from dbaccess.client.tunnel.run import DEFAULT_PORT, TunnelSetup, run_tunnel

    g: Globals = ctx.obj
    request = session_request(target, role, duration, reason, ticket, request_id, wait=not no_wait)
    name = g.profile_name
    broker_url = resolve_broker(name, profiles=g.profiles)
    with api.http_client() as http:

        def logged_in() -> BrokerClient:
            # each session asks again: the token is refreshed as for any command
            login = bearer_token(name, http, profiles=g.profiles)
            return BrokerClient(broker_url, http, login.id_token)

        setup = TunnelSetup(request=request, profile=name, port=port)
        ask = asker(g, "tunnel")
        if port != DEFAULT_PORT:  # resumed elsewhere, the GUI's saved settings break
            ask = replace(ask, resume_options=f" --port {port}")
        code = run_tunnel(setup, logged_in, TunnelCliReport(g), ask)
    raise typer.Exit(code)


class TunnelCliReport:
    """``run.TunnelReport`` on the invocation's console."""

    def __init__(self, g: Globals) -> None:
        self._g = g

    def info(self, text: str) -> None:
        self._g.info(shown(text))

    def warn(self, text: str) -> None:
        self._g.warn(text)

    def ready(self, settings: dict[str, Any]) -> None:
        from contextlib import nullcontext

        from dbaccess.client import replies as broker_replies

        # from now on the broker is asked from the tunnel's thread: no spinner there
        broker_replies.waiting = lambda _text: nullcontext()
        if self._g.json:
            self._g.data(settings)
            return
        sys.stdout.write(settings_text(settings))
        sys.stdout.flush()


def settings_text(s: dict[str, Any]) -> str:
    import shlex

    from dbaccess.text import printable

    rows = [
        ("Host", s["host"]),
        ("Port", s["port"]),
        ("Database", s["database"]),
        ("User", s["user"]),
        ("Password", s["password"]),
        ("SSL", "disable (this hop stays on this machine; the tunnel uses TLS to the gateway)"),
    ]
    lines = [
        f"Tunnel to {s['target']} as {s['role']} on {s['host']}:{s['port']} (Ctrl-C to stop).",
        "In DBeaver or DataGrip: a PostgreSQL connection with",
        *(f"  {label:<9} {value}" for label, value in rows),
        f"  JDBC URL  {s['jdbc_url']}",
        f"The password is kept in {s['password_file']} (only you can read it).",
        f'psql: PGPASSWORD="$(cat {shlex.quote(s["password_file"])})" {s["psql"]}',
    ]
    return "".join(printable(str(line)) + "\n" for line in lines)
