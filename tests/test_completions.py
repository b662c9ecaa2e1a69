"""The checked-in completion scripts match what the current CLI generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_completions.py")
assert spec and spec.loader
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


@pytest.mark.parametrize("shell", sorted(gen.FILES))
def test_completion_script_is_fresh(shell: str) -> None:
    checked_in = (ROOT / "completions" / gen.FILES[shell]).read_text()
    assert checked_in == gen.render(shell), "run: python scripts/gen_completions.py"
    assert "dbaccess" in checked_in
