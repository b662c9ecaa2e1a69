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
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="At most this many records (a page).")
    ] = 100,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            help="Older records: the cursor a previous page printed after 'more:' "
            "(with the same filters).",
        ),
    ] = None,
) -> None:
    """Who got what, when, why, and what became of it, newest first (auditor groups only)."""
    import shlex
    from datetime import datetime

    from dbaccess.cli.output import emit_json, shown
    from dbaccess.client.context import logged_in
    from dbaccess.errors import UsageError, with_profile
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    if since is not None:
        try:
            datetime.fromisoformat(since)
        except ValueError:
            raise UsageError(f"--since: '{since}' is not an ISO date, e.g. 2026-11-01") from None
    with logged_in(g.profile, g.profiles) as (api, _):
        records, more = api.audit(
            since=since, user=user, target=target, type=event_type, limit=limit, before=before
        )
    if g.json:
        # "next": the cursor of the next (older) page, or null: the last page
        emit_json({"data": [r.model_dump(mode="json") for r in records], "next": more})
        return
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
    g.result(table if records else "no audit records match")
    if more is not None:
        again = ["dbaccess", "audit"]
        for flag, value in (
            ("--since", since),
            ("--user", user),
            ("--target", target),
            ("--type", event_type),
        ):
            if value is not None:
                again += [flag, value]
        if limit != 100:
            again += ["--limit", str(limit)]
        again += ["--before", more]
        command = with_profile(shlex.join(again), g.hint_profile())
        g.info(f"more: {shown(command)}")
