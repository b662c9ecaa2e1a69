"""The entry points. ``dbaccess`` answers ``--version`` before importing the CLI stack
(typer and rich cost ~60 ms), since scripts probe for the tool with it, and runs the
common ``exec`` of scripts without that stack (see dbaccess/cli/fast_exec.py).
``dbaccess-broker`` says what to install when the ``[broker]`` extra is missing."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from dbaccess import __version__

        print(f"dbaccess {__version__}")
        return
    if "exec" in sys.argv[1:]:
        from dbaccess.cli.fast_exec import run

        code = run(sys.argv[1:])
        if code is not None:
            sys.exit(code)
    from dbaccess.cli.app import main as cli_main

    cli_main()


# The top-level modules of the [broker] extra (pyproject.toml) and what they pull in; a
# CLI-only install lacks them, and the broker imports them lazily, inside its commands.
BROKER_MODULES = frozenset({
    "fastapi", "starlette", "uvicorn", "httptools", "uvloop", "sqlalchemy", "alembic", "mako",
    "jwt", "cryptography", "psycopg", "psycopg_pool", "psycopg_binary", "pymysql",
    "prometheus_client",
})
BROKER_INSTALL = "pip install 'dbaccess[broker]'"


def broker_main() -> None:
    from dbaccess.errors import ExitCode

    if sys.argv[1:] == ["--version"]:
        from dbaccess import __version__

        print(f"dbaccess-broker {__version__}")
        return
    try:
        from dbaccess.broker.cli import main as broker_cli

        broker_cli()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in BROKER_MODULES:
            raise  # a bug, not a missing extra: keep the traceback
        print(f"error: dbaccess-broker needs the broker's dependencies ({missing} is not "
              "installed)", file=sys.stderr)
        print(f"hint: {BROKER_INSTALL}", file=sys.stderr)
        sys.exit(int(ExitCode.CONFIG))
