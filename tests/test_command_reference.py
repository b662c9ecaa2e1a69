"""docs/commands.md is what the current CLI's --help says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "gen_reference", ROOT / "scripts" / "gen_command_reference.py"
)
assert spec and spec.loader
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_command_reference_is_fresh() -> None:
    assert (ROOT / "docs" / "commands.md").read_text() == gen.render(), (
        "run: python scripts/gen_command_reference.py"
    )


def test_every_command_is_documented() -> None:
    from typer.main import get_command

    from dbaccess.cli.app import app

    assert set(get_command(app).commands) == set(gen.COMMANDS)  # type: ignore[attr-defined]
