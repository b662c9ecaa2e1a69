"""Docs that cannot drift (issue 16, point 5): every ``dbaccess`` command that README.md
and docs/user-guide.md show — in a code block or in the prose — is parsed by the real CLI
(its command, subcommand, options, choices and arguments exist as written), and every code
block with one is marked as run by a named test or as illustrative (tests/doc_examples.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import typer

from dbaccess.cli.app import app
from tests.doc_examples import DOCS, ROOT, as_arguments, blocks, inline_commands

try:  # typer 0.2x carries its own copy of click
    from typer._click.exceptions import MissingParameter, UsageError
except ImportError:  # pragma: no cover - older typer, on click itself
    from click.exceptions import MissingParameter, UsageError  # type: ignore[assignment]

# (command, whole): a block's command is written out in full; the prose may name a command
# without the arguments it needs ("`dbaccess connect` opens a request ..."), so only its
# words and options are checked
EXAMPLES = [
    pytest.param(command, True, id=f"{block.where} {command[:50]}")
    for doc in DOCS
    for block in blocks(doc)
    for command in block.commands()
] + [
    pytest.param(command, False, id=f"{doc.name}:{line} {command[:50]}")
    for doc in DOCS
    for line, command in inline_commands(doc)
]


def parse(arguments: list[str]) -> list[str]:
    """Parse as the CLI would, without running anything; the commands' names, in order."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("dbaccess", list(arguments))
    names = []
    while hasattr(command, "resolve_command"):  # a group: its subcommand next
        rest = [*ctx._protected_args, *ctx.args]  # what the group left for a subcommand
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        names.append(name)
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return names


@pytest.mark.parametrize(("command", "whole"), EXAMPLES)
def test_the_example_is_a_command_the_cli_takes(command: str, whole: bool) -> None:
    arguments = as_arguments(command)
    try:
        names = parse(arguments)
    except MissingParameter as missing:
        if whole:
            pytest.fail(f"dbaccess {' '.join(arguments)}: {missing.format_message()}")
        return
    except UsageError as wrong:
        pytest.fail(f"dbaccess {' '.join(arguments)}: {wrong.format_message()}")
    except SystemExit as done:  # an eager option that does its work at once
        assert done.code == 0 and arguments == ["--install-completion"], command
        return
    assert names, command


def test_a_wrong_option_in_an_example_is_caught() -> None:
    """The check above can fail: an option, a subcommand or a choice that does not exist."""
    for wrong in (
        "dbaccess connect demo --rol readonly",
        "dbaccess profile add x --broker URL",
        "dbaccess review INC-1 --formats md",
        "dbaccess approve",
    ):
        with pytest.raises(UsageError):
            parse(as_arguments(wrong))


def test_every_block_with_a_command_says_whether_it_runs() -> None:
    unmarked = [
        f"{block.where}: {block.commands()[0]}"
        for doc in DOCS
        for block in blocks(doc)
        if block.commands() and block.marker is None
    ]
    assert not unmarked, "mark each with <!-- runs: TEST --> or <!-- illustrative: why -->:\n" + (
        "\n".join(unmarked)
    )


def test_a_block_marked_to_run_names_a_test_that_reads_it() -> None:
    for doc in DOCS:
        for block in blocks(doc):
            if block.marker and block.marker[0] == "runs":
                test = ROOT / block.marker[1]
                assert test.is_file(), f"{block.where}: no such test {block.marker[1]}"
                assert "doc_examples" in test.read_text(), f"{block.where}: {test} reads no doc"
