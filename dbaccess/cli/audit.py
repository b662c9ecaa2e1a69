"""``dbaccess audit``: the audit trail, for members of an auditor group."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.output import Globals, result_table


def audit(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO date/time (UTC), e.g. 2026-11-01.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="The person: subject or email.")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target name.")] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="Event type, e.g. session.granted (the broker lists them)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 1000,
) -> None:
    """Who got what, when, why, and what became of it (auditor groups only)."""
    from datetime import datetime

    from dbaccess.api import logged_in
    from dbaccess.errors import UsageError
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    if since is not None:
        try:
            datetime.fromisoformat(since)
        except ValueError:
            raise UsageError(f"--since: '{since}' is not an ISO date, e.g. 2026-11-01") from None
    with logged_in(g.profile) as (api, _):
        records = api.audit(since=since, user=user, target=target, type=event_type, limit=limit)
    table = result_table("#", "when", "event", "who", "target", "user", "why / cause")
    for r in records:
        d = r.detail
        table.add_row(
            str(r.seq),
            human_time(r.at),
            r.event,
            r.subject or "-",
            str(d.get("target", "-")),
            str(d.get("db_user", "-")),
            str(d.get("reason") or d.get("cause") or d.get("explanation") or "-"),
        )
    g.data(
        [r.model_dump(mode="json") for r in records], table if records else "no audit records match"
    )
