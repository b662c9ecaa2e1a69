"""Test isolation and the real services the integration tests share.

Every test gets a private config and runtime directory, a clean environment and an
in-memory keyring. Services (PostgreSQL, the OIDC provider, the broker, a Secret Service)
are real processes on 127.0.0.1 started once per session; when one cannot start the
tests that need it fail — they are never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

from dbaccess.sandbox.mariadb import MariaDBServer
from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack

# Most machines do not set PYTHONUNBUFFERED; with it, a CLI line that was never flushed
# still reaches a waiting script, and a hang at login went unseen. Every process the tests
# start inherits this environment, so it goes before any fixture copies it.
os.environ.pop("PYTHONUNBUFFERED", None)


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        from keyring.errors import PasswordDeleteError

        if self.entries.pop((service, username), None) is None:
            raise PasswordDeleteError("not found")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoryKeyring]:
    for name in list(os.environ):
        if name.startswith(("DBACCESS_", "PG", "MYSQL_")):
            monkeypatch.delenv(name)
    config = tmp_path / "isolated-config"
    runtime = tmp_path / "isolated-runtime"
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(config))
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("DBACCESS_CACHE_DIR", str(tmp_path / "isolated-cache"))
    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    yield memory
    keyring.set_keyring(previous)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The reconciler would drop the users that engine-level tests create on these shared
    # servers without a lease, at whatever moment its tick lands (a flaky "Access denied").
    # It runs once at start-up here; tests of the reconciler start stacks of their own.
    with Stack(tmp_path_factory.mktemp("stack"), reconcile_interval="1h") as running:
        yield running


@pytest.fixture(scope="session")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretService]:
    with SecretService(tmp_path_factory.mktemp("secrets")) as service:
        yield service


@pytest.fixture(scope="session")
def mariadb(stack: Stack) -> MariaDBServer:
    return stack.mariadb


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skipped test is a failure: every integration test must really run there."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which is not allowed: {report.longrepr}"
