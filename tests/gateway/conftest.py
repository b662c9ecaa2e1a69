"""A gateway on 127.0.0.1:0 in a thread of its own, in front of the suite's PostgreSQL.

Each test makes its own session: an ephemeral upstream user (created here as the admin,
with ``log_statement = all`` so the server's log is an independent count of the statements
it ran), a gateway user name and a gateway secret.

And for the end-to-end modules: a whole stack with a ``dbaccess-broker gateway`` process
(``gw_stack``, one per module) and the real CLI logged in as alice (``gw_cli``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dbaccess.gateway.postgres.server import Gateway, GatewayConfig, serve
from dbaccess.gateway.records import BatchingWriter, MemorySink, RecordSink, StatementRecord
from dbaccess.gateway.sessions import GatewaySession, MemoryDirectory, ScramVerifier, Upstream
from dbaccess.sandbox.postgres import PostgresServer
from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack
from dbaccess.sandbox.tls import TestCertificates, make_certificates
from tests.e2e.conftest import Cli, logged_in_cli

T = TypeVar("T")
HIGH_WATER = 256 * 1024


@dataclass
class Session:
    session: GatewaySession
    secret: str

    @property
    def user(self) -> str:
        return self.session.user

    @property
    def upstream_user(self) -> str:
        return self.session.upstream.user


@dataclass
class RunningGateway:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    sink: RecordSink
    writer: BatchingWriter
    directory: MemoryDirectory
    postgres: PostgresServer
    certs: TestCertificates
    made: list[str]

    @property
    def port(self) -> int:
        return self.gateway.address[1]

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def new_session(self) -> Session:
        tag = secrets.token_hex(4)
        upstream_user = f"gwtest_{tag}"
        password = secrets.token_urlsafe(24)
        with self.postgres.connect() as admin:
            admin.execute(f"CREATE ROLE {upstream_user} LOGIN PASSWORD '{password}'")
            admin.execute(f"ALTER ROLE {upstream_user} SET log_statement = 'all'")
            admin.execute(f"CREATE SCHEMA AUTHORIZATION {upstream_user}")
        self.made.append(upstream_user)
        secret = secrets.token_urlsafe(24)
        session = GatewaySession(
            lease_id=f"lease-{tag}",
            person="alice@example.com",
            target="pg-test",
            role="readwrite",
            user=f"alice_{tag}",
            verifier=ScramVerifier.for_secret(secret),
            upstream=Upstream("127.0.0.1", self.postgres.port, "postgres", upstream_user, password),
        )
        self.directory.add(session)
        return Session(session, secret)

    def records(self, session: Session) -> list[StatementRecord]:
        assert self.writer.flush(10), "records not delivered within 10 s"
        assert isinstance(self.sink, MemorySink), "records() reads a MemorySink"
        return self.sink.for_lease(session.session.lease_id)

    def server_statements(self, session: Session) -> list[str]:
        """What the server's log says this session's user ran (log_statement = all)."""
        pattern = re.compile(
            rf"user={session.upstream_user} .*LOG:  (statement: |execute [^:]*: |fastpath function)"
        )
        text = self.postgres.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if pattern.search(line)]

    def assert_all_audited(self, session: Session) -> list[StatementRecord]:
        """0 unaudited: one record for each statement the server ran, and no record of a
        statement it did not run except those marked not_run."""
        records = self.records(session)
        ran = [r for r in records if r.status != "not_run"]
        logged = self.server_statements(session)
        assert len(ran) == len(logged), (
            f"{len(ran)} records of statements run, the server logged {len(logged)}:\n"
            + "\n".join(logged)
        )
        return records

    def dsn(self, session: Session, password: str | None = None, **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": "postgres",
            "user": session.user,
            "password": session.secret if password is None else password,
            "sslmode": "disable",
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())


def assert_cancelled(conn: Any, sql: str, *, after: float = 1.0, within: float = 10) -> None:
    """``sql`` (a sleep) on ``conn`` is cancelled by ``cancel_safe`` ``after`` seconds in,
    ending within ``within`` seconds (psycopg's legacy ``cancel()`` would hold the GIL)."""
    import psycopg

    timer = threading.Timer(after, conn.cancel_safe)
    timer.start()
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute(sql)
    assert time.monotonic() - started < within


@contextmanager
def running_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    sink: RecordSink,
    *,
    name: str = "gateway",
    **writer_options: Any,
) -> Iterator[RunningGateway]:
    """An in-process gateway whose records go to ``sink`` (through a BatchingWriter made
    with ``writer_options``), in front of a private PostgreSQL of its own; temporary
    directories named after ``name``."""
    # a private server: the statement log of its own, and no IdP or broker to start
    postgres = PostgresServer(Path(tmp_path_factory.mktemp(f"{name}-pg")))
    postgres.start()
    certs = make_certificates(Path(tmp_path_factory.mktemp(f"{name}-tls")))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.cert, certs.key)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-loop", daemon=True)
    thread.start()
    writer = BatchingWriter(sink, **{"max_delay": 0.05, **writer_options})
    directory = MemoryDirectory()
    config = GatewayConfig(tls=tls, params="full", high_water=HIGH_WATER, low_water=HIGH_WATER // 4)
    running = RunningGateway(
        gateway=asyncio.run_coroutine_threadsafe(
            serve(directory, writer, config, live=directory.live), loop
        ).result(10),
        loop=loop,
        sink=sink,
        writer=writer,
        directory=directory,
        postgres=postgres,
        certs=certs,
        made=[],
    )
    try:
        yield running
    finally:
        running.call(running.gateway.close())
        writer.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        postgres.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with running_gateway(tmp_path_factory, MemorySink()) as running:
        yield running


@pytest.fixture(scope="module")
def gw_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("gwstack"), reconcile_interval="1h", gateway=True) as s:
        yield s


@pytest.fixture(scope="module")
def gw_cli(gw_stack: Stack, secret_service: SecretService) -> Cli:
    return logged_in_cli(gw_stack, secret_service)
