"""The documentation says what the code does (sqlite-utils' test_docs pattern): the exit
codes in docs/user-guide.md are ExitCode's, value for value and name for name."""

from __future__ import annotations

import re
from pathlib import Path

from dbaccess.errors import ExitCode

USER_GUIDE = Path(__file__).parent.parent / "docs" / "user-guide.md"


def documented_exit_codes() -> dict[int, str]:
    section = USER_GUIDE.read_text().split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\w+) \|", section, re.MULTILINE)
    return {int(code): name for code, name in rows}


def test_the_user_guide_lists_every_exit_code_and_no_other() -> None:
    assert documented_exit_codes() == {int(code): code.name for code in ExitCode}
