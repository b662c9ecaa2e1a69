"""Hints name the active profile for every command the CLI has (a new command's hints
once missed out: 'dbaccess withdraw ID' never became 'dbaccess --profile P withdraw ID')."""

from __future__ import annotations

from dbaccess.cli.app import app
from dbaccess.errors import _COMMANDS, with_profile


def test_every_command_of_the_cli_gets_the_profile_in_hints() -> None:
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert commands == set(_COMMANDS)
    for name in commands:
        assert with_profile(f"run: dbaccess {name} X", "prod") == (
            f"run: dbaccess --profile prod {name} X"
        )
