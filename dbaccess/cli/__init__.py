"""The ``dbaccess`` command: typer wiring only. Each command lives in its own module."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from dbaccess import __version__
from dbaccess.cli.account import logout, targets, version, whoami
from dbaccess.cli.approvals import approve, deny, requests
from dbaccess.cli.audit import audit
from dbaccess.cli.breakglass import breakglass, review
from dbaccess.cli.connect import connect
from dbaccess.cli.creds import creds
from dbaccess.cli.examples import attach_examples
from dbaccess.cli.exec_ import exec_command
from dbaccess.cli.login import login
from dbaccess.cli.output import Globals, handled
from dbaccess.cli.profiles import app as profiles_app
from dbaccess.cli.sessions import renew, revoke, sessions
from dbaccess.errors import DbaccessError, ExitCode

app = typer.Typer(
    help="Just-in-time database sessions after SSO login, instead of shared passwords.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals could hold a password
    # Plain help: rendering it with rich costs ~150 ms at every --help.
    rich_markup_mode=None,
    # -h as well: every command and subcommand inherits it from this context
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dbaccess {__version__}")
        raise typer.Exit()


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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = Globals(profile=profile, json=json_output, no_input=no_input, debug=debug)


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
    ("breakglass", breakglass),
    ("requests", requests),
    ("approve", approve),
    ("deny", deny),
    ("review", review),
    ("audit", audit),
    ("version", version),
):
    app.command(name)(handled(command))
app.add_typer(profiles_app, name="profiles")
attach_examples(app)


def main() -> None:
    from dbaccess.launch.child import Terminated

    globals_ = Globals()
    try:
        app(prog_name="dbaccess", obj=globals_)
    except DbaccessError as exc:
        if _debug():
            raise
        _report(exc)
        sys.exit(int(exc.exit_code))
    except Terminated as exc:
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))


def _debug() -> bool:
    return "--debug" in sys.argv or os.environ.get("DBACCESS_DEBUG", "").lower() in (
        "1",
        "true",
        "yes",
    )


def _report(exc: DbaccessError) -> None:
    # ctx.obj is gone once typer returns; re-read the flags we need from argv.
    Globals(json="--json" in sys.argv).error(exc)
