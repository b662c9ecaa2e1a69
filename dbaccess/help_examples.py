"""The ``Examples:`` under every command's ``--help``, for both programs: each keeps its
own examples (``cli/examples.py``, ``broker/examples.py``) and hangs them on its typer app
with ``attach_examples``; tests/test_help.py fails when a command has none.

Standard library only: the app is duck-typed, so the broker needs nothing of ``cli/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def epilog(examples: tuple[str, ...]) -> str:
    # "\b" keeps click from re-wrapping the lines into one paragraph
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)


def attach_examples(app: Any, examples: Mapping[str, tuple[str, ...]], path: str = "") -> None:
    """Give every command (and group) registered on the typer ``app`` its epilog:
    ``examples`` maps a command path as typed after the program's name ("" for the
    program itself, "audit verify" for a subcommand) to its example lines."""
    if not path and "" in examples and not isinstance(app.info.epilog, str):
        app.info.epilog = epilog(examples[""])
    for info in app.registered_commands:
        # typer names an unnamed command after its function, with dashes
        name = info.name or getattr(info.callback, "__name__", "").replace("_", "-")
        lines = examples.get(f"{path} {name}".strip())
        if lines and info.epilog is None:
            info.epilog = epilog(lines)
    for group in app.registered_groups:
        name = f"{path} {group.name}".strip()
        lines = examples.get(name)
        if lines and not isinstance(group.epilog, str):  # unset: typer's Default(None)
            group.epilog = epilog(lines)
        attach_examples(group.typer_instance, examples, name)
