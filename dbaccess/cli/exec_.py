"""``dbaccess exec``: run any command with a just-in-time session's credentials prepared."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.options import Duration, NoWait, Reason, RequestId, Role, Target, Ticket
from dbaccess.cli.output import Globals


def exec_command(
    ctx: typer.Context,
    target: Target,
    role: Role,
    command: Annotated[list[str], typer.Argument(help="The command to run, after --.")],
    duration: Duration = None,
    reason: Reason = None,
    ticket: Ticket = None,
    request_id: RequestId = None,
    no_wait: NoWait = False,
) -> None:
    """Run a command (pg_dump, a script...) as a fresh database user; revoked after.

    PostgreSQL: PGHOST PGPORT PGUSER PGDATABASE PGPASSFILE are set. MariaDB/MySQL:
    $MYSQL_HOME/my.cnf holds the credentials (also named by $DBACCESS_MYSQL_DEFAULTS_FILE).
    The command's exit code is returned.
    """
    from dbaccess.cli.connect import run_session
    from dbaccess.cli.options import session_request

    g: Globals = ctx.obj
    g.child_owns_stdout = True  # even for errors: stdout is the command's
    request = session_request(
        target, role, duration, reason, ticket, request_id, wait=not no_wait,
        command=tuple(command),
    )  # fmt: skip
    run_session(g, request)
