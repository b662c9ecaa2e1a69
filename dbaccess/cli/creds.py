"""``dbaccess creds``: print a session's credentials, for tools that cannot be wrapped.

The one command that shows a password, and only with --reveal: the session is *not*
revoked when the command ends (the tool needs it); it expires at its end time, or
``dbaccess revoke ID`` ends it earlier.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.options import Duration, Reason, RequestId, Role, Target, Ticket
from dbaccess.cli.output import Globals


def creds(
    ctx: typer.Context,
    target: Target,
    role: Role,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Yes, print the password (it will be visible).")
    ] = False,
    output_format: Annotated[
        str, typer.Option("--format", help="env (shell variables) or json.")
    ] = "env",
    duration: Duration = None,
    reason: Reason = None,
    ticket: Ticket = None,
    request_id: RequestId = None,
) -> None:
    """Create a session and print its credentials (needs --reveal; not revoked at exit)."""
    import json
    import shlex
    import sys

    from dbaccess.api import logged_in
    from dbaccess.durations import parse_duration
    from dbaccess.errors import UsageError
    from dbaccess.grant import Ask, Want, obtain
    from dbaccess.timestamps import json_ready

    g: Globals = ctx.obj
    if not reveal:
        raise UsageError(
            "creds prints a password; nothing was created",
            hint=f"dbaccess creds {target} --role {role} --reveal "
            "(or prefer: dbaccess exec ... -- your-tool)",
        )
    if output_format not in ("env", "json"):
        raise UsageError(f"--format must be env or json, not '{output_format}'")
    try:
        wanted = parse_duration(duration) if duration else None
    except ValueError as exc:
        raise UsageError(f"--duration: {exc}") from None
    with logged_in(g.profile) as (api, _):
        granted = obtain(
            api,
            Want(
                target=target,
                role=role,
                duration=wanted,
                reason=reason,
                ticket=ticket,
                request_id=request_id,
                wait=False,
            ),
            Ask(),
        )
    g.warn(
        f"printing the password of {granted.db_user}; it stays valid until "
        f"{granted.expires_at:%Y-%m-%d %H:%M:%S} UTC unless you run: "
        f"dbaccess revoke {granted.id}"
    )
    password = granted.password.get_secret_value()
    if output_format == "json" or g.json:
        sys.stdout.write(json.dumps({"data": json_ready(granted.model_dump(mode="json"))}) + "\n")
        return
    if granted.engine == "postgres":
        pairs = {
            "PGHOST": granted.host,
            "PGPORT": str(granted.port),
            "PGUSER": granted.db_user,
            "PGDATABASE": granted.database,
            "PGPASSWORD": password,
        }
    else:
        pairs = {
            "MYSQL_HOST": granted.host,
            "MYSQL_TCP_PORT": str(granted.port),
            "MYSQL_USER": granted.db_user,
            "MYSQL_DATABASE": granted.database,
            "MYSQL_PWD": password,
        }
    pairs["DBACCESS_SESSION_ID"] = granted.id
    sys.stdout.write("".join(f"{k}={shlex.quote(v)}\n" for k, v in pairs.items()))
