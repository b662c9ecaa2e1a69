"""``-h`` is ``--help``, and every command's help ends with an example, in both programs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dbaccess.broker.cli import app as broker_app
from dbaccess.cli.app import app as cli_app


def command_paths(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in getattr(group, "commands", {}).items():
        yield from command_paths(command, (*path, name))


PROGRAMS = {"dbaccess": cli_app, "dbaccess-broker": broker_app}
CASES = [
    (program, path)
    for program, app in PROGRAMS.items()
    for path in command_paths(typer.main.get_command(app))
]


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for program, path in CASES if program == "dbaccess"}
    assert {"connect", "exec", "profiles add", "sessions", ""} <= names
    broker = {" ".join(path) for program, path in CASES if program == "dbaccess-broker"}
    assert {"serve", "check-config", "bootstrap", "audit verify", "policy explain"} <= broker


@pytest.mark.parametrize(
    ("program", "path"), CASES, ids=[f"{p} {' '.join(c)}".strip() for p, c in CASES]
)
def test_h_shows_the_help_with_an_example(program: str, path: tuple[str, ...]) -> None:
    runner = CliRunner()
    app = PROGRAMS[program]
    short = runner.invoke(app, [*path, "-h"], prog_name=program, env={"COLUMNS": "100"})
    assert short.exit_code == 0, short.output
    long = runner.invoke(app, [*path, "--help"], prog_name=program, env={"COLUMNS": "100"})
    assert short.output == long.output
    assert short.output.startswith(f"Usage: {' '.join((program, *path))} ")
    assert "-h, --help" in short.output
    examples = short.output.split("\n  Examples:\n", 1)
    assert len(examples) == 2, f"no example under: {program} {' '.join(path)} --help"
    lines = [line.strip() for line in examples[1].splitlines() if line.strip()]
    assert lines
    for line in lines:
        # what a user would paste: it runs this program (possibly after env assignments
        # or inside eval "$(...)"), and names this command
        assert program + " " in line, line
        assert " ".join(path) in line, line


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        list(args), capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
    )


def test_h_through_the_installed_programs() -> None:
    helped = run(sys.executable, "-m", "dbaccess", "connect", "-h")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: dbaccess connect ")
    broker = run(sys.executable, "-m", "dbaccess.broker", "serve", "-h")
    assert broker.returncode == 0, broker.stderr
    assert broker.stdout.startswith("Usage: dbaccess-broker serve ")
    assert "Examples:" in broker.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "demo", "--role", "readonly", "-h", "--", "true"],
        ["exec", "-h"],
        ["--no-input", "exec", "demo", "-h", "--role", "readonly", "--", "true"],
    ],
)
def test_the_fast_exec_path_hands_h_to_the_full_cli(argv: list[str]) -> None:
    """Scripts run exec without a terminal, where the fast path reads argv first."""
    result = run(sys.executable, "-m", "dbaccess", *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: dbaccess exec ")
    assert "dbaccess exec prod --role readonly --no-input -- pg_dump" in result.stdout


def test_h_after_the_double_dash_goes_to_the_command() -> None:
    from dbaccess.cli import fast_exec

    found = fast_exec.parse(["exec", "demo", "-r", "readonly", "--", "psql", "-h", "db"], {})
    assert found is not None and found.command == ("psql", "-h", "db")
