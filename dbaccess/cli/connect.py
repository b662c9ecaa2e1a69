"""``dbaccess connect``: a just-in-time session in the native client, cleaned up after."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.options import Duration, Reason, Role, Target, Ticket
from dbaccess.cli.output import Globals


def connect(
    ctx: typer.Context,
    target: Target,
    role: Role,
    duration: Duration = None,
    reason: Reason = None,
    ticket: Ticket = None,
    client: Annotated[
        str | None,
        typer.Option("--client", help="Client to run: psql, pgcli, mariadb, mysql, mycli..."),
    ] = None,
    client_args: Annotated[
        list[str] | None, typer.Argument(help="Arguments after -- go to the client (psql).")
    ] = None,
) -> None:
    """Open psql (or mariadb) as a fresh database user that is dropped when you quit."""
    run_session(
        ctx.obj, target, role, duration, reason, ticket, tuple(client_args or ()), client=client
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
) -> None:
    """Shared by connect and exec: parse, run the core flow, exit with the child's code."""
    from dbaccess import api
    from dbaccess.config import chosen_clients, profile_name, resolve_broker
    from dbaccess.connect import ConnectRequest
    from dbaccess.connect import connect as run_connect
    from dbaccess.durations import parse_duration
    from dbaccess.errors import UsageError
    from dbaccess.models import SessionGranted

    try:
        wanted = parse_duration(duration) if duration else None
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    name = profile_name(g.profile)
    request = ConnectRequest(
        clients=chosen_clients(name, client),
        profile=name,
        broker=resolve_broker(name),
        target=target,
        role=role,
        duration=wanted,
        reason=reason,
        ticket=ticket,
        client_args=client_args,
        command=command,
    )

    def on_granted(granted: SessionGranted) -> None:
        g.info(
            f"[dim]dbaccess:[/] connected as [bold]{granted.db_user}[/] to {granted.target} "
            f"({granted.role}), valid until {granted.expires_at:%H:%M:%S} UTC"
        )

    with api.http_client() as http:
        code = run_connect(request, http, on_granted, g.warn)
    g.info("[dim]dbaccess: session revoked, local files removed[/]")
    raise typer.Exit(code)
