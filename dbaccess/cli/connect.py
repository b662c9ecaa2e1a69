"""``dbaccess connect``: a just-in-time session in the native client, cleaned up after."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

from dbaccess.cli.options import (
    Client,
    ClientArgs,
    Duration,
    NoWait,
    Reason,
    RequestId,
    Role,
    Target,
    Ticket,
)
from dbaccess.cli.output import Globals, shown

if TYPE_CHECKING:
    from dbaccess.client.session.grant import Ask
    from dbaccess.client.session.request import SessionRequest


def connect(
    ctx: typer.Context,
    target: Target,
    role: Role,
    duration: Duration = None,
    reason: Reason = None,
    ticket: Ticket = None,
    request_id: RequestId = None,
    no_wait: NoWait = False,
    client: Client = None,
    client_args: ClientArgs = None,
) -> None:
    """Open psql (or mariadb) as a fresh database user that is dropped when you quit.

    When the policy needs approval, a request is opened and connect waits for it (a reason
    is asked for on a terminal); with --no-wait it prints the request id and exits 6.
    """
    from dbaccess.cli.options import session_request

    ctx.obj.child_owns_stdout = True  # even for errors: stdout is the client's
    request = session_request(
        target, role, duration, reason, ticket, request_id, wait=not no_wait,
        client=client, client_args=tuple(client_args or ()),
    )  # fmt: skip
    run_session(ctx.obj, request)


class RichMarkup:
    """``messages.Markup`` for rich: what people wrote escaped, the rest styled."""

    def quote(self, text: str) -> str:
        return shown(text)

    def strong(self, text: str) -> str:
        return f"[bold]{text}[/]"

    def dim(self, text: str) -> str:
        return f"[dim]{text}[/]"


class CliReport:
    """``run.Report`` on the invocation's console (nothing but warnings with --json)."""

    markup = RichMarkup()

    def __init__(self, g: Globals) -> None:
        self._g = g

    def info(self, text: str) -> None:
        self._g.info(text)

    def warn(self, text: str) -> None:
        self._g.warn(text)

    def outcome(self, data: dict[str, Any]) -> None:
        self._g.data(data)


def asker(g: Globals, verb: str = "connect") -> Ask:
    """Prompts and a spinner on a terminal; nothing asked without one (or --no-input)."""
    from contextlib import contextmanager

    from dbaccess.client.session import messages
    from dbaccess.client.session.grant import Ask

    @contextmanager
    def waiting(request: Any) -> Iterator[None]:
        g.info(messages.needs_approval(request, CliReport.markup))
        if g.json or not g.can_prompt:
            yield
            return
        with g.status(messages.WAITING_FOR_APPROVAL):
            yield

    return Ask(reason=g.ask_reason if g.can_prompt else None, waiting=waiting, resume_verb=verb)


def run_session(g: Globals, request: SessionRequest) -> None:
    """Shared by connect, exec and breakglass: the session core over httpx, exiting with
    the child's code."""
    from dbaccess.client import context as api
    from dbaccess.client.auth.login import bearer_token
    from dbaccess.client.broker_api import BrokerClient
    from dbaccess.client.config import chosen_clients, resolve_broker
    from dbaccess.client.session.run import Origin
    from dbaccess.client.session.run import run_session as run

    name = g.profile_name
    clients = chosen_clients(name, request.client, profiles=g.profiles)
    origin = Origin(profile=name, broker=resolve_broker(name, profiles=g.profiles), clients=clients)
    # The child's stdout is the user's data: our envelope (and errors) go to stderr.
    g.child_owns_stdout = True
    with api.http_client() as http:

        def logged_in() -> BrokerClient:
            login = bearer_token(name, http, profiles=g.profiles)
            return BrokerClient(origin.broker, http, login.id_token)

        ask = asker(g, "exec" if request.command is not None else "connect")
        code = run(request, logged_in, CliReport(g), origin, ask)
    raise typer.Exit(code)
