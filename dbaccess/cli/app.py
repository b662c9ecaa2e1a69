"""The ``dbaccess`` command: typer wiring only. Each command lives in its own module."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dbaccess import __version__
from dbaccess.cli.account import logout, targets, version, whoami
from dbaccess.cli.approvals import approve, deny, requests, withdraw
from dbaccess.cli.audit import audit
from dbaccess.cli.breakglass import breakglass, review
from dbaccess.cli.connect import connect
from dbaccess.cli.creds import creds
from dbaccess.cli.examples import EXAMPLES
from dbaccess.cli.exec_ import exec_command
from dbaccess.cli.flags import json_before_typer
from dbaccess.cli.inventory import inventory
from dbaccess.cli.login import login
from dbaccess.cli.output import CHILD_COMMANDS, Globals, announced
from dbaccess.cli.profiles import app as profiles_app
from dbaccess.cli.sessions import renew, revoke, sessions
from dbaccess.cli.tunnel import tunnel
from dbaccess.errors import DbaccessError, ExitCode
from dbaccess.help_examples import attach_examples


class DbaccessGroup(TyperGroup):
    """The ``dbaccess`` group, whose ``main`` is the one place the CLI catches: however it
    is run (the entry point, ``python -m dbaccess``, typer's test runner), a DbaccessError
    becomes ``error:``/``hint:`` (or the JSON envelope) and its documented exit code, and
    click's own errors do too under --json. Tracebacks only with --debug (or
    DBACCESS_DEBUG, read by typer with click's words), from the invocation context."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from dbaccess.client.session.child import Terminated

        argv = list(sys.argv[1:] if args is None else args)
        # The invocation context, made once: main_options fills it with the parsed options;
        # until then (a mistyped option) --json is read as typer would.
        g = extra.get("obj")
        if not isinstance(g, Globals):
            g = extra["obj"] = Globals(json=json_before_typer(argv, os.environ))
        try:
            # Not standalone: click's own errors (unknown option, missing argument, bad
            # value) come here, so that --json reports them in the one envelope too.
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except typer.TyperException as exc:  # click's errors (typer carries its own click)
            ctx = getattr(exc, "ctx", None)
            if g.json and isinstance(exc, _USAGE_ERROR):
                g.child_owns_stdout = ctx is not None and ctx.command.name in CHILD_COMMANDS
                g.error(_usage_error(exc))
            else:
                exc.show()  # type: ignore[attr-defined]
            code = exc.exit_code
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            code = int(ExitCode.ERROR)
        except DbaccessError as exc:
            if g.debug:
                raise
            g.error(exc)
            code = int(exc.exit_code)
        except Terminated as exc:
            code = 128 + exc.signum
        except KeyboardInterrupt:
            code = int(ExitCode.INTERRUPTED)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=DbaccessGroup,
    help="Just-in-time database sessions after SSO login, instead of shared passwords.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals could hold a password
    # Plain help: rendering it with rich costs ~150 ms at every --help.
    rich_markup_mode=None,
    # -h as well, inherited by every command and subcommand (--help first: click names
    # the first one in "Try ... for help")
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dbaccess {__version__}")
        raise typer.Exit()


def _check_timeout(value: float | None) -> float | None:
    if value is not None and not 0 < value < float("inf"):
        raise typer.BadParameter(f"{value:g} is not a number of seconds above 0")
    return value


@app.callback()
def main_options(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option(envvar="DBACCESS_PROFILE", help="Profile to use.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", envvar="DBACCESS_JSON", help="Machine-readable output.")
    ] = False,
    no_input: Annotated[
        bool, typer.Option("--no-input", envvar="DBACCESS_NO_INPUT", help="Never prompt.")
    ] = False,
    debug: Annotated[bool, typer.Option(envvar="DBACCESS_DEBUG", help="Show tracebacks.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            envvar="DBACCESS_TIMEOUT",
            callback=_check_timeout,
            metavar="SECONDS",
            help="Wait at most this long for each answer of the broker (default 30).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    from dbaccess.client import replies as broker_replies  # not at import: --help stays lean
    from dbaccess.client.replies import SLOW_CALL_SECONDS

    # Filled in place: DbaccessGroup.main made it, and reports errors with these flags.
    g = ctx.obj if isinstance(ctx.obj, Globals) else Globals()
    g.profile, g.json, g.no_input, g.debug, g.timeout = (
        profile,
        json_output,
        no_input,
        debug,
        timeout,
    )
    ctx.obj = g
    broker_replies.set_timeout(timeout)
    broker_replies.waiting = lambda text: g.status(text, delay=SLOW_CALL_SECONDS)


for name, command in (
    ("login", login),
    ("logout", logout),
    ("whoami", whoami),
    ("targets", targets),
    ("connect", connect),
    ("exec", exec_command),
    ("sessions", sessions),
    ("revoke", revoke),
    ("renew", renew),
    ("creds", creds),
    ("tunnel", tunnel),
    ("breakglass", breakglass),
    ("requests", requests),
    ("approve", approve),
    ("deny", deny),
    ("withdraw", withdraw),
    ("review", review),
    ("audit", audit),
    ("inventory", inventory),
    ("version", version),
):
    app.command(name)(announced(command))
app.add_typer(profiles_app, name="profiles")
attach_examples(app, EXAMPLES)


def main() -> None:
    app(prog_name="dbaccess")  # exits: DbaccessGroup.main


# click's UsageError (unknown option, missing argument, bad value), which typer does not
# export: BadParameter's base class.
_USAGE_ERROR = typer.BadParameter.__mro__[1]


def _usage_error(exc: Any) -> DbaccessError:
    """click's usage error as ours: its message, and the help to read as the hint."""
    from dbaccess.errors import UsageError

    ctx = exc.ctx
    where = ctx.command_path if ctx is not None else "dbaccess"
    return UsageError(exc.format_message(), hint=f"{where} --help")
