"""A second PostgreSQL target that can be frozen: for the tests and the benchmark of a
target that stops answering (docs/broker.md, "When a database fails").

``frozen()`` stops the server's processes with SIGSTOP, as a wedged host, a debugger or
a VM pause would: its TCP connections stay open and the kernel keeps acknowledging
packets, so only the broker's own deadlines notice. (Each PostgreSQL backend calls
setsid(), so the postmaster's process group is the postmaster alone: the backends are
found as its children.)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol

from dbaccess.broker.engines.postgres import bootstrap as postgres_bootstrap
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.postgres import PostgresServer
from dbaccess.sandbox.stack import PROVISIONER, PROVISIONER_ENV, Stack

TARGET_TOML = """
[targets.{name}]
engine = "postgres"
host = "127.0.0.1"
port = {port}
database = "postgres"
sslmode = "disable"
provisioner = {{ user = "{provisioner}", password_env = "{provisioner_env}" }}

[targets.{name}.roles.readonly]
group_role = "dbaccess_readonly"
read_only = true

[[rules]]
name = "dev-{name}"
groups = ["dev"]
targets = ["{name}"]
roles = ["readonly"]
max_duration = "1h"
"""


def add_postgres_target(stack: Stack, name: str, workdir: Path) -> PostgresServer:
    """Start another PostgreSQL server, bootstrap it and add it to ``stack``'s broker
    configuration as target ``name`` (restart the broker to use it). The caller stops
    the server."""
    server = PostgresServer(workdir)
    server.start()
    with stack.broker_config.open("a") as config:
        config.write(
            TARGET_TOML.format(
                name=name,
                port=server.port,
                provisioner=PROVISIONER,
                provisioner_env=PROVISIONER_ENV,
            )
        )
    target = load_settings(stack.broker_config).targets[name]
    with server.connect() as admin:
        postgres_bootstrap.apply(target, admin, stack.provisioner_password)
    return server


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


class _Server(Protocol):
    @property
    def pid(self) -> int: ...


@contextmanager
def frozen(server: _Server) -> Iterator[None]:
    """The server's processes stopped (SIGSTOP) for the block; always resumed after."""
    stopped = [server.pid]
    try:
        _signal(stopped, signal.SIGSTOP)  # the postmaster first: it forks no more
        children = _children(server.pid)
        stopped += children
        _signal(children, signal.SIGSTOP)
        yield
    finally:
        _signal(stopped, signal.SIGCONT)
