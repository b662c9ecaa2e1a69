"""Write the shell completion scripts in completions/ (tests/test_completions.py checks them).

python scripts/gen_completions.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "bash": "dbaccess.bash",
    "zsh": "_dbaccess",
    "fish": "dbaccess.fish",
    "powershell": "dbaccess.ps1",
}


def render(shell: str) -> str:
    """The script typer generates for ``shell`` (what ``--show-completion`` prints)."""
    env = {**os.environ, "_DBACCESS_COMPLETE": f"source_{shell}"}
    result = subprocess.run(
        [sys.executable, "-m", "dbaccess"], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout


def main() -> None:
    for shell, name in FILES.items():
        (ROOT / "completions" / name).write_text(render(shell))
        print(f"completions/{name}")


if __name__ == "__main__":
    main()
