"""The CLI as a user installs it: from the wheel alone, in a virtualenv of its own with no
extras (issue 16, point 4) — then login, connect and exec against the sandbox's broker.

The dev environment has every extra installed, so a module of the CLI that imports a
broker-only package (fastapi, sqlalchemy, ...) or a file missing from the wheel would pass
every other test and break ``pip install dbaccess``. Here the wheel's own dependencies are
resolved by pip, from the package index, as on a user's machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_cli(
    tmp_path_factory: pytest.TempPathFactory, stack: Stack, secret_service: SecretService
) -> Cli:
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work)]
        + [str(ROOT)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = work.glob("dbaccess-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return Cli(stack, secret_service, command=(str(env_dir / "bin" / "dbaccess"),), home=work)


def test_the_wheel_alone_installs_no_broker_and_no_dev_tools(wheel_cli: Cli) -> None:
    python = Path(wheel_cli.command[0]).with_name("python")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    present = json.loads(probe.stdout)
    # what the CLI needs is there, what only the broker or the tests need is not
    assert present["typer"] and present["httpx"] and present["keyring"]
    assert not any(present[name] for name in ("fastapi", "sqlalchemy", "psycopg", "pytest"))


_PROBE = """
import importlib.util, json
names = ["typer", "httpx", "keyring", "fastapi", "sqlalchemy", "psycopg", "pytest"]
print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))
"""


def test_login_connect_and_exec_from_the_wheel(wheel_cli: Cli) -> None:
    login = wheel_cli.login("alice")
    assert login.returncode == 0, login.stderr
    assert "alice" in wheel_cli.run("whoami").stdout

    connected = wheel_cli.run(
        "connect", "demo", "--role", "readonly", "--", "-At", "-c", "select current_user"
    )
    assert connected.returncode == 0, connected.stderr
    user = connected.stdout.strip()
    assert user.startswith("dba_alice_")
    assert not wheel_cli.role_exists(user)  # dropped when psql ended

    executed = wheel_cli.run(
        "exec",
        "demo",
        "--role",
        "readonly",
        "--",
        "psql",
        "-At",
        "-c",
        "select count(*) from orders",
    )
    assert executed.returncode == 0, executed.stderr
    assert int(executed.stdout.strip()) >= 3
    assert "Traceback" not in connected.stderr + executed.stderr


def test_the_sandbox_on_the_wheel_alone_says_what_to_install(wheel_cli: Cli) -> None:
    python = Path(wheel_cli.command[0]).with_name("python")
    result = subprocess.run(
        [str(python), "-m", "dbaccess.sandbox"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=wheel_cli.home,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "pip install 'dbaccess[broker]'" in result.stderr
