"""Every registered engine implements the whole interface of engines/base.py, and the
broker outside engines/ names no engine: adding one is its own folder plus its line in
engines/registry.py (docs/development.md, "Adding an engine")."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dbaccess.broker
from dbaccess.broker.engines import ENGINES, engine_part
from dbaccess.broker.engines.base import (
    Engine,
    EngineAdmin,
    EngineBootstrap,
    EngineChecks,
    EngineModule,
)
from dbaccess.broker.settings import TargetSection

PARTS: dict[str, type[Any]] = {
    "engine": EngineModule,
    "bootstrap": EngineBootstrap,
    "admin": EngineAdmin,
    "checks": EngineChecks,
}
BROKER = Path(dbaccess.broker.__file__).parent


def members(protocol: type[Any]) -> dict[str, Any]:
    """A protocol's members: name -> its function or property, or None for an attribute."""
    found: dict[str, Any] = dict.fromkeys(getattr(protocol, "__annotations__", {}))
    for name, value in vars(protocol).items():
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, property)):
            found[name] = value
    return found


def parameters(function: Any, *, bound: bool) -> list[str]:
    names = list(inspect.signature(function).parameters)
    return names[1:] if bound else names


def test_the_protocols_have_the_members_this_test_looks_for() -> None:
    # so that a change to members() cannot make every check below vacuous
    assert set(members(EngineChecks)) == {
        "read_only_caveat",
        "missing",
        "read_only_writes",
        "shared_server_warning",
        "broker_connections",
        "server_connections",
        "server_problems",
        "target_warnings",
    }
    assert set(members(EngineAdmin)) == {
        "ADMIN_DSN_EXAMPLE",
        "apply_bootstrap",
        "change_own_password",
    }
    assert {
        "name",
        "max_username_length",
        "create_user",
        "revoke_users",
        "troubled",
        "ping",
        "close",
    } <= set(members(Engine))


@pytest.mark.parametrize("kind", sorted(ENGINES))
@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_part_of_every_engine_has_the_whole_protocol(kind: str, part: str) -> None:
    module = engine_part(kind, part)
    for name, declared in members(PARTS[part]).items():
        assert hasattr(module, name), f"engines/{kind}/{part}.py has no {name}"
        found = getattr(module, name)
        if inspect.isfunction(declared):
            assert callable(found), f"engines/{kind}/{part}.py: {name} is not a function"
            assert parameters(found, bound=False) == parameters(declared, bound=True), (
                f"engines/{kind}/{part}.py: {name}'s parameters differ from engines/base.py"
            )
        elif declared is None:
            assert isinstance(found, str) and found, f"engines/{kind}/{part}.py: {name}"


def target(kind: str) -> TargetSection:
    return TargetSection.model_validate(
        {
            "engine": kind,
            "host": "127.0.0.1",
            "port": 1,
            "database": "app",
            "provisioner": {"user": "dbaccess_provisioner", "password_env": "UNSET_IN_THIS_TEST"},
            "roles": {"readonly": {"group_role": "app_readonly", "read_only": True}},
        }
    )


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_every_engine_class_has_the_broker_calls(kind: str) -> None:
    engine = engine_part(kind, "engine").ENGINE("app", target(kind))  # connects to nothing yet
    try:
        assert engine.name == "app"
        assert isinstance(engine.max_username_length, int) and engine.max_username_length > 16
        for name, declared in members(Engine).items():
            # methods and properties on the class; data (name, health) set by __init__
            assert hasattr(type(engine), name) or name in vars(engine), f"{kind}: no {name}"
            if isinstance(declared, property):
                assert isinstance(inspect.getattr_static(engine, name), property), name
            elif inspect.isfunction(declared):
                assert parameters(getattr(engine, name), bound=False) == parameters(
                    declared, bound=True
                ), f"{kind}: {name}'s parameters differ"
    finally:
        engine.close()


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_the_checks_need_no_database_driver_to_be_imported(kind: str) -> None:
    # check-config --offline imports every target's checks (shared_servers) and logs in to
    # nothing: the checks module reaches its driver only inside the functions that ask.
    probe = (
        "import sys; from dbaccess.broker.engines import checks_for; "
        f"checks_for({kind!r}); "
        "print(sorted(m for m in ('psycopg', 'psycopg_pool', 'pymysql') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


def engine_names_outside_engines(root: Path) -> list[str]:
    """Each place in the broker's code outside engines/ that names a registered engine:
    a string that is an engine's name (``target.engine == "postgres"``) or an engine
    package's module (imported, or named for importlib). Comments and prose in docstrings
    and messages ("PostgreSQL roles ...") are not code that branches on an engine."""
    packages = tuple(ENGINES.values())
    found: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        if (root / "engines") in path.parents:
            continue
        where = path.relative_to(root.parent.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            named: list[str] = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in ENGINES or node.value.startswith(packages):
                    named.append(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                named += [m for m in modules if m.startswith(packages)]
            elif isinstance(node, ast.Import):
                named += [a.name for a in node.names if a.name.startswith(packages)]
            found += [(str(where), getattr(node, "lineno", 0), name) for name in named]
    return [f"{where}:{line}: {name}" for where, line, name in sorted(found)]


def test_no_module_outside_engines_names_an_engine() -> None:
    assert engine_names_outside_engines(BROKER) == []


def test_the_search_finds_an_engine_named_outside_engines(tmp_path: Path) -> None:
    # what the broker's checks were before they moved into engines/<engine>/checks.py
    broker = tmp_path / "dbaccess" / "broker"
    (broker / "engines" / "postgres").mkdir(parents=True)
    (broker / "engines" / "postgres" / "checks.py").write_text('ENGINE = "postgres"\n')
    (broker / "checks.py").write_text(
        '"""PostgreSQL roles and MariaDB users are server-wide."""\n'
        "from dbaccess.broker.engines.mariadb.bootstrap import INIT_CONNECT\n"
        "from dbaccess.broker.engines.postgres import bootstrap\n"
        "import dbaccess.broker.engines.mariadb.checks\n"
        "def f(target):\n"
        "    # a comment naming postgres\n"
        '    return target.engine == "mariadb"\n'
    )
    found = engine_names_outside_engines(broker)
    assert sorted(line.split(": ", 1)[1] for line in found) == [
        "dbaccess.broker.engines.mariadb.bootstrap",
        "dbaccess.broker.engines.mariadb.bootstrap.INIT_CONNECT",
        "dbaccess.broker.engines.mariadb.checks",
        "dbaccess.broker.engines.postgres",
        "dbaccess.broker.engines.postgres.bootstrap",
        "mariadb",
    ]
    assert all(line.startswith("dbaccess/broker/checks.py:") for line in found)
