"""Options shared by the commands that open a session (connect, exec, creds)."""

from __future__ import annotations

from typing import Annotated

import typer

Target = Annotated[str, typer.Argument(help="Target database, as the broker names it.")]
Role = Annotated[str, typer.Option("--role", "-r", help="Role template to use.")]
Duration = Annotated[str | None, typer.Option("--duration", "-d", help="How long, e.g. 30m or 1h.")]
Reason = Annotated[str | None, typer.Option("--reason", help="Why you need access.")]
Ticket = Annotated[
    str | None, typer.Option("--ticket", help="Ticket id, when the policy asks for one.")
]
