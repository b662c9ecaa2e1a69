"""Write docs/commands.md from the CLI's own --help (tests/test_command_reference.py keeps
it in step).

    python scripts/gen_command_reference.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "login",
    "logout",
    "whoami",
    "targets",
    "connect",
    "exec",
    "sessions",
    "revoke",
    "renew",
    "creds",
    "tunnel",
    "breakglass",
    "requests",
    "approve",
    "deny",
    "withdraw",
    "review",
    "audit",
    "inventory",
    "profiles",
    "version",
]
SUBCOMMANDS = {"profiles": ["add", "use", "remove"]}


def help_text(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    env.pop("DBACCESS_JSON", None)
    result = subprocess.run(
        [sys.executable, "-m", "dbaccess", *args, "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.rstrip() + "\n"


def render() -> str:
    parts = [
        "# Command reference\n",
        "Generated from `dbaccess --help` by `scripts/gen_command_reference.py`; a test fails "
        "when it is stale. Exit codes: [user-guide.md](user-guide.md#exit-codes).\n",
        "## dbaccess\n",
        "```\n" + help_text() + "```\n",
    ]
    for command in COMMANDS:
        parts += [f"## dbaccess {command}\n", "```\n" + help_text(command) + "```\n"]
        for sub in SUBCOMMANDS.get(command, []):
            parts += [
                f"### dbaccess {command} {sub}\n",
                "```\n" + help_text(command, sub) + "```\n",
            ]
    return "\n".join(parts)


def main() -> None:
    (ROOT / "docs" / "commands.md").write_text(render())
    print("docs/commands.md")


if __name__ == "__main__":
    main()
