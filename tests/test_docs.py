"""The documentation says what the code does (sqlite-utils' test_docs pattern): the exit
codes in docs/user-guide.md are ExitCode's, value for value and name for name; the layout in
docs/development.md names every module under dbaccess/, and nothing that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from dbaccess.errors import ExitCode

ROOT = Path(__file__).parent.parent
USER_GUIDE = ROOT / "docs" / "user-guide.md"
DEVELOPMENT = ROOT / "docs" / "development.md"


def documented_exit_codes() -> dict[int, str]:
    section = USER_GUIDE.read_text().split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\w+) \|", section, re.MULTILINE)
    return {int(code): name for code, name in rows}


def test_the_user_guide_lists_every_exit_code_and_no_other() -> None:
    assert documented_exit_codes() == {int(code): code.name for code in ExitCode}


def documented_layout() -> list[str]:
    """The paths of the Layout block, rebuilt from its indentation (two spaces a level;
    a name ending in / is a folder, and what follows it is its role)."""
    section = DEVELOPMENT.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    paths: list[str] = []
    folders: list[str] = []
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        del folders[depth:]
        paths.append("".join(folders) + name)
        if name.endswith("/"):
            folders.append(name)
    return paths


def holds_code(path: Path) -> bool:
    """More than a docstring and ``from __future__`` imports."""
    body = ast.parse(path.read_text()).body
    return any(
        not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
        for node in body
    )


def test_the_layout_names_every_module_and_only_those() -> None:
    listed = documented_layout()
    modules = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "dbaccess").rglob("*.py")
        # a package's __init__ is its folder's line, unless it holds code of its own
        if path.name != "__init__.py" or holds_code(path)
    )
    assert [m for m in modules if m not in listed] == [], "add these to docs/development.md"
    gone = [p for p in listed if " " not in p and not (ROOT / p).exists()]
    assert gone == [], "docs/development.md names what is not in the tree"
    assert len(listed) == len(set(listed)), "a module is listed twice"
