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
    from dbaccess.wire import BreakglassCreate


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
    ctx.obj.child_owns_stdout = True  # even for errors: stdout is the client's
    run_session(
        ctx.obj,
        target,
        role,
        duration,
        reason,
        ticket,
        tuple(client_args or ()),
        client=client,
        request_id=request_id,
        wait=not no_wait,
    )


def asker(g: Globals, verb: str = "connect") -> Ask:
    """Prompts and a spinner on a terminal; nothing asked without one (or --no-input)."""
    from contextlib import contextmanager

    from dbaccess.client.session.grant import Ask

    @contextmanager
    def waiting(request: Any) -> Iterator[None]:
        g.info(
            f"dbaccess: request [bold]{request.id}[/] needs {request.approvals_required} "
            f"approval(s) from {shown(', '.join(request.approver_groups))}; approvers run: "
            f"dbaccess approve {request.id}"
        )
        if g.json or not g.can_prompt:
            yield
            return
        with g.status("waiting for approval (Ctrl-C stops waiting; the request stays open)"):
            yield

    return Ask(
        reason=g.ask_reason if g.can_prompt else None, waiting=waiting, resume_verb=verb
    )


def run_session(
    g: Globals,
    target: str,
    role: str,
    duration: str | None,
    reason: str | None,
    ticket: str | None,
    client_args: tuple[str, ...],
    command: tuple[str, ...] | None = None,
    client: str | None = None,
    request_id: str | None = None,
    wait: bool = True,
    breakglass: BreakglassCreate | None = None,
) -> None:
    """Shared by connect and exec: parse, run the core flow, exit with the child's code."""
    from dbaccess.client import context as api
    from dbaccess.client.config import chosen_clients, resolve_broker
    from dbaccess.client.session.outcome import session_outcome
    from dbaccess.client.session.run import ConnectRequest
    from dbaccess.client.session.run import connect as run_connect
    from dbaccess.durations import parse_duration
    from dbaccess.errors import UsageError
    from dbaccess.timestamps import human as human_time
    from dbaccess.wire import SessionGranted

    try:
        wanted = parse_duration(duration) if duration else None
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    name = g.profile_name
    request = ConnectRequest(
        clients=chosen_clients(name, client, profiles=g.profiles),
        profile=name,
        broker=resolve_broker(name, profiles=g.profiles),
        target=target,
        role=role,
        duration=wanted,
        reason=reason,
        ticket=ticket,
        client_args=client_args,
        command=command,
        request_id=request_id,
        wait=wait,
        breakglass=breakglass,
    )

    # The child's stdout is the user's data: our envelope (and errors) go to stderr.
    g.child_owns_stdout = True
    ran: list[SessionGranted] = []
    warnings: list[str] = []

    def warn(text: str) -> None:
        warnings.append(text)
        g.warn(text)

    def on_granted(granted: SessionGranted) -> None:
        ran.append(granted)
        if granted.kind == "breakglass":
            g.warn(
                f"BREAK-GLASS{' DRILL' if granted.drill else ''} session for incident "
                f"{granted.incident}: every statement is logged by the database, the on-call "
                "channel was notified, and the session will be reviewed"
            )
        g.info(
            f"[dim]dbaccess:[/] connected as [bold]{granted.db_user}[/] to "
            f"{shown(granted.target)} ({shown(granted.role)}), valid until "
            f"{human_time(granted.expires_at)}"
        )

    with api.http_client() as http:
        ask = asker(g, "exec" if command is not None else "connect")
        code = run_connect(request, http, on_granted, warn, ask, profiles=g.profiles)
    g.info("[dim]dbaccess: session revoked, local files removed[/]")
    if ran:
        g.data(session_outcome(ran[0], code, warnings))
    raise typer.Exit(code)
