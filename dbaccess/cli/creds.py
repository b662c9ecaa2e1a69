"""``dbaccess creds``: print a session's credentials, for tools that cannot be wrapped.

The one command that shows a password, and only with --reveal: the session is *not*
revoked when the command ends (the tool needs it); it expires at its end time, or
``dbaccess revoke ID`` ends it earlier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dbaccess.cli.options import (
    Duration,
    Reason,
    RequestId,
    Role,
    Target,
    Ticket,
    session_request,
)
from dbaccess.cli.output import Globals, emit_json, shown

if TYPE_CHECKING:
    from dbaccess.wire import SessionGranted


def creds(
    ctx: typer.Context,
    target: Target,
    role: Role,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Yes, print the password (it will be visible).")
    ] = False,
    output_format: Annotated[
        str, typer.Option("--format", help="env (export lines, for eval) or json.")
    ] = "env",
    duration: Duration = None,
    reason: Reason = None,
    ticket: Ticket = None,
    request_id: RequestId = None,
) -> None:
    """Create a session and print its credentials (needs --reveal; not revoked at exit)."""
    import sys

    from dbaccess.client.context import logged_in
    from dbaccess.client.dbclients.registry import client_for
    from dbaccess.client.session.grant import Ask, obtain
    from dbaccess.errors import UsageError
    from dbaccess.timestamps import human as human_time

    g: Globals = ctx.obj
    if not reveal:
        raise UsageError(
            "creds prints a password; nothing was created",
            hint=f"dbaccess creds {target} --role {role} --reveal "
            "(or prefer: dbaccess exec ... -- your-tool)",
        )
    if output_format not in ("env", "json"):
        raise UsageError(f"--format must be env or json, not '{output_format}'")
    request = session_request(target, role, duration, reason, ticket, request_id, wait=False)
    with logged_in(g.profile, g.profiles) as (api, _):
        granted: SessionGranted = obtain(api, request, Ask())
    g.warn(
        f"printing the password of {granted.db_user}; it stays valid until "
        f"{human_time(granted.expires_at)} unless you run: "
        f"dbaccess revoke {granted.id}"
    )
    if output_format == "json" or g.json:
        emit_json({"data": granted.model_dump(mode="json")})
        return
    sys.stdout.write(shell_exports(granted))
    hint = client_for(granted.engine).CREDS_HINT
    if hint:
        g.info(f"[dim]{shown(hint)}[/]")


def shell_exports(granted: SessionGranted) -> str:
    """``export`` lines for ``eval "$(dbaccess creds ...)"``: the variables the engine's
    clients read, so the session reaches them as it would through ``connect``."""
    import shlex

    from dbaccess.client.dbclients.registry import client_for

    pairs = client_for(granted.engine).export_env(granted)
    pairs["DBACCESS_SESSION_ID"] = granted.id
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in pairs.items())
