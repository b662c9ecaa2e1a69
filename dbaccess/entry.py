"""The ``dbaccess`` entry point: answers ``--version`` before importing the CLI stack
(typer and rich cost ~60 ms), since scripts probe for the tool with it."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from dbaccess import __version__

        print(f"dbaccess {__version__}")
        return
    from dbaccess.cli import main as cli_main

    cli_main()
