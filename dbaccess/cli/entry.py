"""The entry points. ``dbaccess`` answers ``--version`` before importing the CLI stack
(typer and rich cost ~60 ms), since scripts probe for the tool with it, and runs the
common ``exec`` of scripts without that stack (see dbaccess/cli/fast_exec.py).
``dbaccess-broker``'s entry point is dbaccess/broker/entry.py."""

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
