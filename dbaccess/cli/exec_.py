"""``dbaccess exec``: run any command with a just-in-time session's credentials prepared."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.output import Globals


def exec_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="Target database, as the broker names it.")],
    role: Annotated[str, typer.Option("--role", "-r", help="Role template to use.")],
    command: Annotated[list[str], typer.Argument(help="The command to run, after --.")],
    duration: Annotated[
        str | None, typer.Option("--duration", "-d", help="How long, e.g. 30m or 1h.")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why you need access.")] = None,
    ticket: Annotated[
        str | None, typer.Option("--ticket", help="Ticket id, when the policy asks for one.")
    ] = None,
) -> None:
    """Run a command (pg_dump, a script...) as a fresh database user; revoked after.

    PostgreSQL: PGHOST PGPORT PGUSER PGDATABASE PGPASSFILE are set. MariaDB/MySQL:
    $MYSQL_HOME/my.cnf holds the credentials (also named by $DBACCESS_MYSQL_DEFAULTS_FILE).
    The command's exit code is returned.
    """
    from dbaccess.cli.connect import run_session

    g: Globals = ctx.obj
    run_session(g, target, role, duration, reason, ticket, (), tuple(command))
