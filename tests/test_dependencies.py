"""Every package the code imports is one the distribution declares (issue 16, point 4).

A package that arrives only as another's dependency (starlette through fastapi, markupsafe
through jinja2) works until that other package stops needing it; then ``pip install
dbaccess`` gives an ImportError nobody's machine showed. So each ``import`` of a
third-party package under dbaccess/ must name a distribution in ``[project]
dependencies`` — or, for the broker, the gateway and the sandbox (which need
``dbaccess[broker]``), in the ``broker`` extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dbaccess"
# these parts run only with the broker extra installed (the `dbaccess-broker` shim says so)
NEEDS_THE_BROKER_EXTRA = ("broker", "gateway", "sandbox")


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    broker = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["broker"]
    }
    return core, core | broker


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file (stdlib and dbaccess left out)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "dbaccess"}


def test_every_imported_package_is_declared_where_its_code_runs() -> None:
    core, with_broker = declared()
    providers = importlib.metadata.packages_distributions()
    missing: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0]
        allowed = with_broker if part in NEEDS_THE_BROKER_EXTRA else core
        where = "[broker] extra" if part in NEEDS_THE_BROKER_EXTRA else "dependencies"
        for module in sorted(imported_modules(path)):
            distributions = {canonicalize_name(d) for d in providers.get(module, [])}
            assert distributions, f"{path.relative_to(ROOT)} imports {module}: not installed"
            if not distributions & allowed:
                missing.append(
                    f"{path.relative_to(ROOT)} imports {module} "
                    f"({', '.join(sorted(distributions))}), not in the {where}"
                )
    assert not missing, "\n".join(missing)


def test_the_scan_sees_an_undeclared_import(tmp_path: Path) -> None:
    """The check above can fail: a file importing a package nobody declares is caught."""
    sample = tmp_path / "sample.py"
    sample.write_text("import starlette.responses\nfrom markupsafe import Markup\nimport json\n")
    assert imported_modules(sample) == {"starlette", "markupsafe"}
    core, with_broker = declared()
    assert "pytest" not in with_broker  # a dev tool, not something the code may import


def test_the_broker_shims_know_every_module_of_the_broker_extra() -> None:
    """``dbaccess-broker`` and ``python -m dbaccess.sandbox`` on a CLI-only install say
    "pip install 'dbaccess[broker]'" for a module they know to be the extra's, and keep
    the traceback for any other: each module the broker's code imports from the extra
    must be on their list, or its absence would show as a crash."""
    from dbaccess.broker.entry import BROKER_MODULES

    core, _ = declared()
    providers = importlib.metadata.packages_distributions()
    unknown = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in NEEDS_THE_BROKER_EXTRA:
            for module in imported_modules(path):
                distributions = {canonicalize_name(d) for d in providers.get(module, [])}
                if not distributions & core and module not in BROKER_MODULES:
                    unknown.add(module)
    assert not unknown, sorted(unknown)
