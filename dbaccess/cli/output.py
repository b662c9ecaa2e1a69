"""Rendering for people and for scripts.

Results — tables, lists, "revoked ..." lines, or the one JSON envelope with --json — go to
stdout, so pipes and redirects get them; messages, warnings, prompts and spinners go to
stderr. Commands that run a child (connect, exec, breakglass) leave stdout to the child:
their envelope is the last line on stderr.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from dbaccess.client.config import hint_profile
from dbaccess.errors import DbaccessError, render, with_profile

if TYPE_CHECKING:
    from rich.console import Console

    from dbaccess.client.config import ProfileFile


# Commands whose stdout belongs to the child they run (psql, exec's command).
CHILD_COMMANDS = frozenset({"connect", "exec", "breakglass"})


@dataclass
class Globals:
    profile: str | None = None
    json: bool = False
    no_input: bool = False
    debug: bool = False
    timeout: float | None = None
    # connect/exec/breakglass: stdout is the child's, so the envelope goes to stderr
    child_owns_stdout: bool = False
    _statuses: list[int] = field(default_factory=list, repr=False)
    _profiles: ProfileFile | None = field(default=None, repr=False)

    @property
    def profiles(self) -> ProfileFile:
        """config.toml, read once per invocation — on first use, so --help reads none —
        and passed down to whatever needs a profile's settings."""
        if self._profiles is None:
            from dbaccess.client.config import ProfileFile

            self._profiles = ProfileFile.load()
        return self._profiles

    @property
    def profile_name(self) -> str:
        """The profile this invocation uses: --profile > DBACCESS_PROFILE > current."""
        from dbaccess.client.config import profile_name

        return profile_name(self.profile, self.profiles)

    def hint_profile(self) -> str | None:
        """The profile the commands in hints must name (``config.hint_profile``)."""
        try:
            return hint_profile(self.profile, self.profiles)
        except DbaccessError:
            return None  # an unreadable config.toml is reported on its own

    @property
    def console(self) -> Console:
        from rich.console import Console  # rich costs ~30 ms: only when we print

        # soft_wrap: a message stays one line in a log or a pipe (rich would otherwise wrap
        # it at 80 columns when stderr is not a terminal); tables still fit the width.
        return Console(stderr=True, highlight=False, soft_wrap=True)

    def data(self, payload: Any, human: Any = None) -> None:
        """Report a result: the JSON envelope with --json, else ``human`` on stdout."""
        if self.json:
            emit_json({"data": payload}, self.envelope_stream)
        elif human:
            print_result(human)

    def result(self, human: Any) -> None:
        """More of the human result (a second table), unless --json."""
        if not self.json:
            print_result(human)

    @property
    def envelope_stream(self) -> IO[str]:
        return sys.stderr if self.child_owns_stdout else sys.stdout

    @contextmanager
    def status(self, text: str, delay: float = 0.0) -> Iterator[None]:
        """A spinner on stderr while the block runs — on a terminal only, after ``delay``
        seconds, and never inside another one (rich allows one live display at a time)."""
        console = self.console
        if self._statuses or not console.is_terminal:
            yield
            return
        self._statuses.append(1)
        lock = threading.Lock()
        shown: list[Any] = []
        done = False

        def show() -> None:
            with lock:
                if not done:
                    spinner = console.status(text)
                    spinner.start()
                    shown.append(spinner)

        timer = threading.Timer(delay, show)
        timer.daemon = True
        try:
            if delay > 0:
                timer.start()
            else:
                show()
            yield
        finally:
            timer.cancel()
            with lock:
                done = True
                for spinner in shown:
                    spinner.stop()
            self._statuses.pop()

    @property
    def can_prompt(self) -> bool:
        """A person is there to answer: a terminal on stdin and no --no-input."""
        return not self.no_input and sys.stdin.isatty()

    def ask(self, question: str) -> str:
        return str(self.console.input(f"{question} "))

    def ask_reason(self, why: str) -> str:
        self.console.print(f"[yellow]{shown(why)}[/]")  # the broker's words
        return self.ask("Reason:")

    def info(self, text: str) -> None:
        if not self.json:
            self.console.print(text)

    def warn(self, text: str) -> None:
        # a warning's next command ("unless you run: dbaccess revoke ID") names the profile too
        text = with_profile(text, self.hint_profile())
        self.console.print(f"[yellow]warning:[/] {shown(text)}")  # plain text, never markup

    def error(self, exc: DbaccessError) -> None:
        """Report ``exc`` as every dbaccess program does (``render``), with the commands in it
        naming the profile: the JSON envelope where results go, else lines on stderr."""
        exc.name_profile(self.hint_profile())
        render(exc, as_json=self.json, stream=self.envelope_stream if self.json else sys.stderr)


def emit_json(envelope: dict[str, Any], stream: IO[str] | None = None) -> None:
    """One JSON line (stdout unless told), flushed at once: a script may be waiting for it
    while this process waits too (login's device code), and a pipe's buffer would hold it
    back. Every timestamp in it is RFC 3339 UTC."""
    from dbaccess.timestamps import json_ready

    stream = stream or sys.stdout
    stream.write(json.dumps(json_ready(envelope), default=str) + "\n")
    stream.flush()


def print_result(human: Any) -> None:
    """``human`` (text with rich markup, or a table) on stdout. On a terminal rich fits it
    to the width; anywhere else (a pipe, a file) nothing is cut or wrapped — a script
    greps for a long session id or reason — and tables lose their box lines, leaving
    columns a tool like awk can split."""
    from rich.console import Console

    if sys.stdout.isatty():
        Console(highlight=False, soft_wrap=True).print(human)
        return
    import io

    from rich.table import Table

    if isinstance(human, Table):
        human.box = None
        human.pad_edge = False
    buffer = io.StringIO()
    Console(
        file=buffer,
        width=1_000_000,
        no_color=True,
        highlight=False,
        soft_wrap=True,
        force_terminal=False,
    ).print(human)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    sys.stdout.flush()


def shown(value: object) -> str:
    """``value`` (a name, an email, a subject: text from people or the identity provider)
    ready to sit inside a rich-markup message: markup escaped, controls written visibly."""
    from rich.markup import escape

    from dbaccess.text import printable

    return escape(printable(str(value)))


def result_table(*headers: str) -> Any:
    """A result table whose cells are shown as written: a reason like "[/]" or "[red]" is
    not rich markup (it crashed or restyled the approver's table), and control characters
    (an ESC that clears the screen, a newline that splits the row) are shown escaped."""
    from rich.table import Table
    from rich.text import Text

    from dbaccess.text import printable

    class PlainTable(Table):
        def add_row(self, *cells: Any, **options: Any) -> None:
            super().add_row(
                *(Text(printable(c)) if isinstance(c, str) else c for c in cells), **options
            )

    return PlainTable(*headers)


def session_table(sessions: list[Any]) -> Any:
    from dbaccess.timestamps import human as human_time

    rows = result_table("id", "target", "role", "user", "state", "expires")
    for s in sessions:
        rows.add_row(s.id, s.target, s.role, s.db_user, s.state, human_time(s.expires_at))
    return rows


def announced(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command after the notice every command gives (tokens kept in a plain file).
    Its errors are reported by the one catch site, ``DbaccessGroup.main`` (cli/app.py)."""
    import typer

    @functools.wraps(command)
    def wrapper(ctx: typer.Context, *args: Any, **kwargs: Any) -> None:
        _announce_insecure_storage(ctx.obj if isinstance(ctx.obj, Globals) else Globals())
        command(ctx, *args, **kwargs)

    return wrapper


def _announce_insecure_storage(g: Globals) -> None:
    name = g.profile_name
    stored = g.profiles.profiles.get(name)
    if stored is not None and stored.insecure_storage:
        g.warn(insecure_storage_notice(name))


def insecure_storage_notice(profile: str) -> str:
    return (
        f"profile {profile} keeps its tokens in a plain 0600 file, not a keyring (insecure storage)"
    )
