"""The ``dbaccess`` entry point: answers ``--version`` before importing the CLI stack
(typer and rich cost ~60 ms), since scripts probe for the tool with it, and runs the
common ``exec`` of scripts without that stack (see dbaccess/fast_exec.py)."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from dbaccess import __version__

        print(f"dbaccess {__version__}")
        return
    if "exec" in sys.argv[1:]:
        from dbaccess.fast_exec import run

        code = run(sys.argv[1:])
        if code is not None:
            sys.exit(code)
    from dbaccess.cli import main as cli_main

    cli_main()
