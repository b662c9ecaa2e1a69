"""The client side of an engine is one module, ``client/dbclients/<engine>.py``, plus its
line in ``client/dbclients/registry.py`` (docs/development.md, "Adding an engine"): no
other module of the client core or the CLI names an engine. The twin of
tests/broker/engines/test_interface.py's search for the broker."""

from __future__ import annotations

import ast
from pathlib import Path

import dbaccess
from dbaccess.client.dbclients.registry import CLIENTS

PACKAGE = Path(dbaccess.__file__).parent
DBCLIENTS = "dbaccess.client.dbclients"


def engine_names_outside_client_modules(root: Path) -> list[str]:
    """Each place in ``root``'s client/ and cli/ code, outside the engines' client modules
    and the registry, that names a registered engine: a string that is an engine's name
    (``granted.engine == "postgres"``) or an import of an engine's client module. Prose in
    docstrings, help text and examples ("psql (or mariadb)") does not branch on an engine."""
    modules = tuple(f"{DBCLIENTS}.{engine}" for engine in CLIENTS)
    own = {root / "client" / "dbclients" / f"{name}.py" for name in [*CLIENTS, "registry"]}
    found: list[tuple[str, int, str]] = []
    for path in sorted([*(root / "client").rglob("*.py"), *(root / "cli").rglob("*.py")]):
        if path in own:
            continue
        where = path.relative_to(root.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            named: list[str] = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in CLIENTS or node.value.startswith(modules):
                    named.append(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                named += [m for m in imported if m.startswith(modules)]
            elif isinstance(node, ast.Import):
                named += [a.name for a in node.names if a.name.startswith(modules)]
            found += [(str(where), getattr(node, "lineno", 0), name) for name in named]
    return [f"{where}:{line}: {name}" for where, line, name in sorted(found)]


def test_no_module_outside_the_client_modules_names_an_engine() -> None:
    assert engine_names_outside_client_modules(PACKAGE) == []


def test_the_search_finds_an_engine_named_outside_its_module(tmp_path: Path) -> None:
    # what the client had before the registry: an if-chain in the session launcher, the
    # install hints of every engine's programs in one table
    root = tmp_path / "dbaccess"
    (root / "client" / "dbclients").mkdir(parents=True)
    (root / "cli").mkdir()
    (root / "client" / "dbclients" / "mariadb.py").write_text('NAMES = ("mariadb", "mysql")\n')
    (root / "client" / "dbclients" / "registry.py").write_text(
        "from dbaccess.client.dbclients import mariadb, postgres\n"
        'CLIENTS = {"postgres": postgres, "mariadb": mariadb}\n'
    )
    (root / "client" / "launch.py").write_text(
        '"""Runs psql (or mariadb) for a granted session."""\n'
        "from dbaccess.client.dbclients import postgres\n"
        "import dbaccess.client.dbclients.mariadb\n"
        "def find(granted):\n"
        "    # a comment naming postgres\n"
        '    if granted.engine == "postgres":\n'
        "        return postgres.find_psql()\n"
    )
    (root / "cli" / "programs.py").write_text(
        'HINTS = {"mariadb": "apt-get install mariadb-client", "psql": "apt-get ..."}\n'
    )
    found = engine_names_outside_client_modules(root)
    assert sorted(line.split(":", 1)[0] + ": " + line.rsplit(": ", 1)[1] for line in found) == [
        "dbaccess/cli/programs.py: mariadb",
        "dbaccess/client/launch.py: dbaccess.client.dbclients.mariadb",
        "dbaccess/client/launch.py: dbaccess.client.dbclients.postgres",
        "dbaccess/client/launch.py: postgres",
    ]
