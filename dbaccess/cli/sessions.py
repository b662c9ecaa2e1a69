"""``dbaccess sessions``, ``revoke`` and ``renew``: your live sessions."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.completion import complete_session
from dbaccess.cli.output import Globals, session_table


def sessions(ctx: typer.Context) -> None:
    """List your live sessions."""
    from dbaccess.client import name_cache
    from dbaccess.client.context import logged_in

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, _):
        live = api.list_sessions()
    name_cache.remember_sessions(g.profile, live)  # for completion of session ids
    g.data(
        [s.model_dump(mode="json") for s in live],
        session_table(live) if live else "no live sessions",
    )


def revoke(
    ctx: typer.Context,
    session_id: Annotated[
        str | None,
        typer.Argument(
            help="Session id or a unique prefix (see: sessions).", autocompletion=complete_session
        ),
    ] = None,
    all_sessions: Annotated[bool, typer.Option("--all", help="Revoke all of yours.")] = False,
) -> None:
    """Revoke a session now (its user is dropped and its connections are ended)."""
    from dbaccess.client.context import logged_in
    from dbaccess.errors import UsageError

    g: Globals = ctx.obj
    if (session_id is None) == (not all_sessions):
        raise UsageError(
            "name one session id, or pass --all (not both)",
            hint="dbaccess sessions lists your session ids",
        )
    with logged_in(g.profile, g.profiles) as (api, _):
        ids = [session_id] if session_id else [s.id for s in api.list_sessions()]
        done = [api.revoke_session(i) for i in ids]
    g.data(
        [s.model_dump(mode="json") for s in done],
        "\n".join(f"revoked {s.id} ({s.db_user}): {s.state}" for s in done) or "no live sessions",
    )


def renew(
    ctx: typer.Context,
    session_id: Annotated[
        str,
        typer.Argument(
            help="Session id or a unique prefix (see: sessions).", autocompletion=complete_session
        ),
    ],
    duration: Annotated[
        str | None, typer.Option("--duration", "-d", help="Last until now + this, e.g. 30m.")
    ] = None,
    shorten: Annotated[
        bool,
        typer.Option(
            "--shorten", help="Allow an end earlier than the current one (else left as is)."
        ),
    ] = False,
) -> None:
    """Extend a session, within the longest session the policy allows. It is never
    shortened unless you pass --shorten."""
    from dbaccess.client.context import logged_in
    from dbaccess.durations import parse_duration_option
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    wanted = parse_duration_option(duration)
    seconds = int(wanted.total_seconds()) if wanted else None
    with logged_in(g.profile, g.profiles) as (api, _):
        info = api.renew_session(session_id, seconds, shorten=shorten)
    if info.changed:
        human = f"{info.db_user} is now valid until {human_time(info.expires_at)}"
    else:
        human = (
            f"unchanged: {info.db_user} is already valid until "
            f"{human_time(info.expires_at)}, later than now + {duration or 'its length'}"
        )
    g.data(info.model_dump(mode="json"), human)
    if not info.changed:  # the next command is a message, not part of the result
        from dbaccess.errors import with_profile

        asked = f" --duration {duration}" if duration else ""
        hint = (
            f"to end it earlier: dbaccess renew {info.id}{asked} --shorten "
            f"(or now: dbaccess revoke {info.id})"
        )
        g.info(f"[dim]hint:[/] {with_profile(hint, g.hint_profile())}")
