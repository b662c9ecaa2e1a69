"""Options shared by the commands that open a session (connect, exec, creds, breakglass)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from dbaccess.cli.completion import complete_role, complete_target

if TYPE_CHECKING:
    from dbaccess.client.session.request import SessionRequest

Target = Annotated[
    str,
    typer.Argument(help="Target database, as the broker names it.", autocompletion=complete_target),
]
Role = Annotated[
    str, typer.Option("--role", "-r", help="Role template to use.", autocompletion=complete_role)
]
Duration = Annotated[str | None, typer.Option("--duration", "-d", help="How long, e.g. 30m or 1h.")]
Reason = Annotated[str | None, typer.Option("--reason", help="Why you need access.")]
Ticket = Annotated[
    str | None, typer.Option("--ticket", help="Ticket id, when the policy asks for one.")
]
RequestId = Annotated[
    str | None,
    typer.Option("--request", help="Use this approved request (see: dbaccess requests --mine)."),
]
NoWait = Annotated[
    bool,
    typer.Option(
        "--no-wait",
        help="If approval is needed, print the request id and exit 6 instead of waiting.",
    ),
]
Client = Annotated[
    str | None,
    typer.Option("--client", help="Client to run: psql, pgcli, mariadb, mysql, mycli..."),
]
ClientArgs = Annotated[
    list[str] | None, typer.Argument(help="Arguments after -- go to the client (psql).")
]


def session_request(
    target: str,
    role: str,
    duration: str | None,
    reason: str | None,
    ticket: str | None,
    request_id: str | None,
    *,
    wait: bool,
    **command: Any,
) -> SessionRequest:
    """The request the shared options above make, checked: one place for connect, exec,
    creds and tunnel (``command``: what only one of them adds, e.g. its client)."""
    from dbaccess.client.session.request import SessionRequest
    from dbaccess.durations import parse_duration_option

    return SessionRequest(
        target=target,
        role=role,
        duration=parse_duration_option(duration),
        reason=reason,
        ticket=ticket,
        request_id=request_id,
        wait=wait,
        **command,
    ).validate()
