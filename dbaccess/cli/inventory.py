"""``dbaccess inventory``: the standing accounts of the targets, for auditors (through the
broker's ``GET /v1/inventory``); the same report as ``dbaccess-broker inventory``."""

from __future__ import annotations

from typing import Annotated

import typer

from dbaccess.cli.completion import complete_target
from dbaccess.cli.output import Globals


def inventory(
    ctx: typer.Context,
    target: Annotated[
        str | None,
        typer.Argument(
            help="Only this target (default: every one).", autocompletion=complete_target
        ),
    ] = None,
) -> None:
    """Every login account of the targets that is not a live dbaccess session user, with
    what makes it risky (auditor groups only). Exit 12 when any is a finding."""
    from dbaccess.cli.output import emit_json, shown
    from dbaccess.client.context import logged_in
    from dbaccess.errors import ExitCode
    from dbaccess.inventory_view import report_lines

    g: Globals = ctx.obj
    with logged_in(g.profile, g.profiles) as (api, _):
        report = api.inventory(target)
    document = report.model_dump(mode="json")
    if g.json:
        emit_json({"data": document})
    else:
        g.result("\n".join(shown(line) for line in report_lines(document)))
    for name, error in report.errors.items():
        g.warn(f"target '{name}' was not read: {error}")
    if report.errors:
        raise typer.Exit(int(ExitCode.DATABASE_ERROR))
    if any(a.status == "finding" for a in report.accounts):
        raise typer.Exit(int(ExitCode.FINDINGS))
