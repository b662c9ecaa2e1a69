"""Drive the real ``dbaccess`` CLI as a separate process against the real local stack."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import approve_device_code
from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack

DBACCESS = [sys.executable, "-m", "dbaccess"]


@dataclass
class Cli:
    stack: Stack
    secrets: SecretService
    command: Sequence[str] = tuple(DBACCESS)  # another installation's, e.g. from the wheel
    home: Path | None = None  # its own config and runtime directories, not the stack's

    @property
    def env(self) -> dict[str, str]:
        env = self.stack.cli_env()
        env.update(self.secrets.env)
        if self.home is not None:
            for variable, name in (
                ("DBACCESS_CONFIG_DIR", "config"),
                ("DBACCESS_RUNTIME_DIR", "runtime"),
                ("DBACCESS_CACHE_DIR", "cache"),
            ):
                (self.home / name).mkdir(parents=True, exist_ok=True, mode=0o700)
                env[variable] = str(self.home / name)
        return env

    @property
    def runtime_dir(self) -> Path:
        return Path(self.env["DBACCESS_RUNTIME_DIR"])

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )

    def login(
        self, user: str, *, deny: bool = False, profile: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``dbaccess login`` with a person approving the code at the provider."""
        process = self.popen(*(["--profile", profile] if profile else []), "--json", "login")
        assert process.stdout is not None
        first = readline_within(process, 20)
        code = json.loads(first)["data"]
        approve_device_code(code["verification_uri_complete"], user, deny=deny)
        out, err = process.communicate(timeout=60)
        return subprocess.CompletedProcess(process.args, process.returncode, first + out, err)

    def withdraw_open_requests(self) -> None:
        """Take back this user's pending or approved requests: asking again for the same
        target and role would reuse one, so tests must not leave them to each other."""
        mine = self.run("--json", "requests", "--mine")
        assert mine.returncode == 0, mine.stderr
        for request in json.loads(mine.stdout)["data"]:
            if request["state"] in ("pending", "approved"):
                assert self.run("--no-input", "withdraw", request["id"]).returncode == 0

    def store(self) -> Store:
        return Store(f"sqlite:///{self.stack.broker_config.parent / 'broker.db'}")

    def role_exists(self, name: str) -> bool:
        with self.stack.postgres.connect() as admin:
            return (
                admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
                is not None
            )

    def mariadb_account_exists(self, user: str) -> bool:
        conn = self.stack.mariadb.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM mysql.user WHERE user = %s", (user,))
                row = cur.fetchone()
        finally:
            conn.close()
        return bool(row and row[0])

    def managed_roles(self) -> Sequence[str]:
        with self.stack.postgres.connect() as admin:
            rows = admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'dba\\_%'"
            ).fetchall()
        return [str(r[0]) for r in rows]


def readline_within(process: subprocess.Popen[str], seconds: float) -> str:
    """The process's first stdout line, which must arrive (flushed) within ``seconds`` —
    a script waiting for it would otherwise hang as long as the process waits."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=seconds):
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"no line on stdout within {seconds} s; stderr: {err}")
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else ""
    return line


def logged_in_cli(stack: Stack, secret_service: SecretService) -> Cli:
    """The real CLI on ``stack``, logged in as alice (the fixtures of several folders)."""
    runner = Cli(stack, secret_service)
    result = runner.login("alice")
    assert result.returncode == 0, result.stderr
    return runner


@pytest.fixture(scope="session")
def cli(stack: Stack, secret_service: SecretService) -> Cli:
    return logged_in_cli(stack, secret_service)
