"""Rendering for people (rich, on stderr) and for scripts (one JSON envelope on stdout)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbaccess.errors import DbaccessError

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class Globals:
    profile: str | None = None
    json: bool = False
    no_input: bool = False
    debug: bool = False

    @property
    def console(self) -> Console:
        from rich.console import Console  # rich costs ~30 ms: only when we print

        # soft_wrap: a message stays one line in a log or a pipe (rich would otherwise wrap
        # it at 80 columns when stderr is not a terminal); tables still fit the width.
        return Console(stderr=True, highlight=False, soft_wrap=True)

    def data(self, payload: Any, human: Any = None) -> None:
        """Report a result: the JSON envelope with --json, else ``human`` on stderr."""
        if self.json:
            emit_json({"data": payload})
        elif human:
            self.console.print(human)

    @property
    def can_prompt(self) -> bool:
        """A person is there to answer: a terminal on stdin and no --no-input."""
        return not self.no_input and sys.stdin.isatty()

    def ask(self, question: str) -> str:
        return str(self.console.input(f"{question} "))

    def ask_reason(self, why: str) -> str:
        self.console.print(f"[yellow]{why}[/]")
        return self.ask("Reason:")

    def info(self, text: str) -> None:
        if not self.json:
            self.console.print(text)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/] {text}")

    def error(self, exc: DbaccessError) -> None:
        if self.json:
            emit_json({"error": exc.to_json()})
            return
        from rich.markup import escape

        # Messages quote what people and policies wrote (an incident pattern "[A-Z]{3}-..."):
        # escaped, so rich does not take it for markup and swallow it.
        console = self.console
        console.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True)
        if exc.hint:
            console.print(f"[dim]hint:[/] {escape(exc.hint)}")


def emit_json(envelope: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed at once: a script may be waiting for it while this
    process waits too (login's device code), and a pipe's buffer would hold it back."""
    sys.stdout.write(json.dumps(envelope, default=str) + "\n")
    sys.stdout.flush()


def session_table(sessions: list[Any]) -> Any:
    from rich.table import Table

    table = Table("id", "target", "role", "user", "state", "expires (UTC)")
    for s in sessions:
        table.add_row(
            s.id, s.target, s.role, s.db_user, s.state, f"{s.expires_at:%Y-%m-%d %H:%M:%S}"
        )
    return table


def handled(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command; turn a DbaccessError into ``error:``/``hint:`` (or the JSON envelope)
    and its documented exit code. Tracebacks only with --debug."""
    import typer

    @functools.wraps(command)
    def wrapper(ctx: typer.Context, *args: Any, **kwargs: Any) -> None:
        try:
            _announce_insecure_storage(ctx.obj if isinstance(ctx.obj, Globals) else Globals())
            command(ctx, *args, **kwargs)
        except DbaccessError as exc:
            g: Globals = ctx.obj if isinstance(ctx.obj, Globals) else Globals()
            if g.debug:
                raise
            g.error(exc)
            raise typer.Exit(int(exc.exit_code)) from None

    return wrapper


def _announce_insecure_storage(g: Globals) -> None:
    from dbaccess.config import ProfileFile, profile_name

    name = profile_name(g.profile)
    stored = ProfileFile.load().profiles.get(name)
    if stored is not None and stored.insecure_storage:
        g.warn(insecure_storage_notice(name))


def insecure_storage_notice(profile: str) -> str:
    return (
        f"profile {profile} keeps its tokens in a plain 0600 file, not a keyring (insecure storage)"
    )
