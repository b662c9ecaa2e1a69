"""Connection floods: anyone who reaches the gateway's port can open connections before
authenticating. Those still in their start-up are capped per process (max_startups) and
per client address (max_startups_per_source), all client connections per process
(max_connections); one over a cap gets FATAL 53300 at once and nothing else (no store
lookup, no upstream connection), and every start-up, however it ends, gives its slot back.

Each test runs a gateway of its own (its limits) on the suite's gateway loop, in front of
the suite's PostgreSQL, with the sessions of the ``gateway`` fixture."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbaccess.broker.settings import load_settings
from dbaccess.errors import ConfigError
from dbaccess.gateway import process
from dbaccess.gateway.postgres import wire
from dbaccess.gateway.postgres.server import Gateway, GatewayConfig, serve
from dbaccess.gateway.records import MemorySink
from dbaccess.gateway.sessions import GatewaySession, MemoryDirectory
from dbaccess.sandbox.tls import make_certificates
from tests.gateway.conftest import RunningGateway, Session
from tests.gateway.test_gateway_settings import GATEWAY, gateway_config

LOCAL = ("127.0.0.1", 0)
SSL_REQUEST = (8).to_bytes(4, "big") + wire.SSL_REQUEST.to_bytes(4, "big")


class CountingDirectory:
    """The suite's sessions, and how often the gateway asked for one."""

    def __init__(self, directory: MemoryDirectory) -> None:
        self.directory = directory
        self.lookups = 0

    def lookup(self, user: str) -> GatewaySession | None:
        self.lookups += 1
        return self.directory.lookup(user)


@contextmanager
def limited_gateway(
    running: RunningGateway, **limits: Any
) -> Iterator[tuple[Gateway, CountingDirectory]]:
    directory = CountingDirectory(running.directory)
    config = GatewayConfig(**limits)
    gateway = running.call(serve(directory, running.writer, config, running.directory.live))
    try:
        yield gateway, directory
    finally:
        running.call(gateway.close())


def counts(gateway: Gateway) -> tuple[int, dict[str, int], int]:
    return gateway.startups, dict(gateway.startups_by_source), gateway.established_connections


def wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


def dsn(gateway: Gateway, session: Session, host: str = "127.0.0.1", **extra: str) -> str:
    parts = {
        "host": host,
        "port": str(gateway.address[1]),
        "dbname": "postgres",
        "user": session.user,
        "password": session.secret,
        "sslmode": "disable",
        "connect_timeout": "5",
        **extra,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items())


OPENED: list[socket.socket] = []  # closed after each test, whatever it asserted


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def silent(gateway: Gateway, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """Connections that send nothing: they hold a start-up slot each."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(gateway.address, 5, (source, 0))
        OPENED.append(sock)
        sockets.append(sock)
    wait_for(lambda: gateway.startups_by_source.get(source, 0) == count)
    return sockets


def refusal(gateway: Gateway, source: str = "127.0.0.1", first: bytes = b"") -> bytes:
    """What the gateway sends a new connection before it closes it."""
    with socket.create_connection(gateway.address, 5, (source, 0)) as sock:
        if first:
            sock.sendall(first)
        sock.settimeout(5)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            # bytes the gateway had not read (``first``) make its close a reset, which
            # comes after the error: the error is read first, as libpq reads it
            assert data and first
        return data


def test_a_full_start_up_cap_refuses_at_once_and_a_login_works_after(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    session = gateway.new_session()
    with limited_gateway(gateway, max_startups=5) as (gw, directory):
        idle = silent(gw, 5)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as raised:
            psycopg.connect(dsn(gw, session))
        assert time.monotonic() - started < 2  # not the handshake timeout: at once
        # libpq keeps no SQLSTATE of a failed connection: the raw answer below has it
        assert "FATAL:  too many connections are starting at the gateway" in str(raised.value)
        assert "max_startups = 5" in str(raised.value) and "try again" in str(raised.value)
        # a raw client sees the ErrorResponse, FATAL, then the end of the stream
        answer = refusal(gw, first=SSL_REQUEST)
        assert answer[:1] == b"E" and b"SFATAL\0" in answer and b"C53300\0" in answer
        assert directory.lookups == 0  # nothing was asked of the store
        # the operator reads why in the log, once for the two refusals (not once each)
        warnings = [r.getMessage() for r in caplog.records if "refused since" in r.getMessage()]
        assert warnings == [
            "gateway: 1 connection(s) refused since the last such warning, the latest with: "
            "too many connections are starting at the gateway (max_startups = 5); try again "
            "in a moment"
        ]
        assert counts(gw) == (5, {"127.0.0.1": 5}, 0)

        for sock in idle:
            sock.close()
        wait_for(lambda: gw.startups == 0)
        with psycopg.connect(dsn(gw, session)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert counts(gw) == (0, {}, 1)
        wait_for(lambda: counts(gw) == (0, {}, 0))


def test_a_tls_client_is_told_too(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    with limited_gateway(gateway, max_startups=1) as (gw, _):
        idle = silent(gw, 1)
        with pytest.raises(psycopg.OperationalError) as raised:
            psycopg.connect(dsn(gw, session, sslmode="prefer"))
        # libpq 17.2+ does not show a server's text read before TLS (CVE-2024-10977): it
        # says the server answered the SSLRequest with an error; older ones show the text
        message = str(raised.value)
        assert (
            "server sent an error response during SSL exchange" in message
            or "too many connections are starting" in message
        )
        for sock in idle:
            sock.close()


def test_one_address_cannot_take_every_start_up_slot(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    # the idle ones come from 127.0.0.2 (bound; the loopback has all of 127/8), psycopg's
    # from 127.0.0.1
    with limited_gateway(gateway, max_startups=10, max_startups_per_source=3) as (gw, directory):
        idle = silent(gw, 3, "127.0.0.2")
        answer = refusal(gw, "127.0.0.2")
        assert b"C53300\0" in answer
        assert b"too many connections from 127.0.0.2 are starting" in answer
        assert b"max_startups_per_source = 3" in answer
        # another address still gets in
        with psycopg.connect(dsn(gw, session, host="127.0.0.1")) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
            assert counts(gw) == (3, {"127.0.0.2": 3}, 1)
        assert directory.lookups == 1  # the refused one was not looked up
        for sock in idle:
            sock.close()
        wait_for(lambda: counts(gw) == (0, {}, 0))
        for _ in range(4):  # 127.0.0.2 again, more than 3 times (slots were given back)
            sock = silent(gw, 1, "127.0.0.2")[0]
            sock.close()
            wait_for(lambda: gw.startups == 0)
        with psycopg.connect(dsn(gw, session, host="127.0.0.1")) as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)


def test_max_connections_counts_established_and_starting_ones(
    gateway: RunningGateway,
) -> None:
    session = gateway.new_session()
    with (
        limited_gateway(gateway, max_startups=2, max_connections=3) as (gw, _),
        ExitStack() as opened,
    ):
        first = opened.enter_context(psycopg.connect(dsn(gw, session)))
        second = opened.enter_context(psycopg.connect(dsn(gw, session)))
        assert counts(gw) == (0, {}, 2)
        idle = silent(gw, 1)  # the third: starting
        with pytest.raises(psycopg.OperationalError) as raised:
            psycopg.connect(dsn(gw, session))
        assert "FATAL:  too many connections at the gateway (max_connections = 3)" in str(
            raised.value
        )
        # the established ones are not disturbed
        assert first.execute("SELECT 1").fetchone() == (1,)
        idle[0].close()
        wait_for(lambda: gw.startups == 0)
        third = opened.enter_context(psycopg.connect(dsn(gw, session)))
        assert b"C53300\0" in refusal(gw)  # 3 established: full
        first.close()
        wait_for(lambda: gw.established_connections == 2)
        with psycopg.connect(dsn(gw, session)) as fourth:
            assert fourth.execute("SELECT 4").fetchone() == (4,)
        for conn in (second, third):
            conn.close()
        wait_for(lambda: counts(gw) == (0, {}, 0) and gw.connections == 0)


def test_every_way_a_start_up_ends_gives_its_slot_back(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    with limited_gateway(
        gateway, max_startups=50, max_startups_per_source=50, handshake_timeout=0.5
    ) as (gw, _):
        # garbage: an invalid start-up packet, a direct TLS hello without TLS configured,
        # a protocol 2 start-up, a CancelRequest for no key, a half SCRAM exchange
        garbage = [
            b"\x00\x00\x00\x08\xde\xad\xbe\xef",
            b"\x16\x03\x01\x00\x05hello",
            (9).to_bytes(4, "big") + (2 << 16).to_bytes(4, "big") + b"\0",
            (16).to_bytes(4, "big") + wire.CANCEL_REQUEST.to_bytes(4, "big") + bytes(8),
            wire.startup_message({"user": session.user, "database": "postgres"}) + b"p\0\0\0\5x",
            b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n",
        ]
        for data in garbage * 3:
            with socket.create_connection(gw.address, 5) as sock:
                sock.sendall(data)
                sock.settimeout(5)
                while sock.recv(4096):
                    pass
        # vanished: a start-up, then gone without a word, at several points
        for first in (b"", SSL_REQUEST, wire.startup_message({"user": session.user})):
            for _ in range(5):
                sock = socket.create_connection(gw.address, 5)
                if first:
                    sock.sendall(first)
                sock.close()
        # wrong password, and an unknown user
        for user, password in ((session.user, "wrong"), ("nobody", "x")):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(dsn(gw, session, user=user, password=password))
        # timed out: silent, and half a start-up packet
        slow = silent(gw, 4)
        slow[0].sendall(wire.startup_message({"user": session.user})[:5])
        for sock in slow:
            sock.settimeout(5)
            assert b"C08006\0" in sock.recv(4096)  # "did not finish its start-up in time"
            sock.close()
        wait_for(lambda: counts(gw) == (0, {}, 0) and gw.connections == 0)
        # and a full slot count after all that: max_startups start-ups fit again
        idle = silent(gw, 50)
        assert b"C53300\0" in refusal(gw)
        for sock in idle:
            sock.close()
        wait_for(lambda: counts(gw) == (0, {}, 0))
        with psycopg.connect(dsn(gw, session)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_for(lambda: counts(gw) == (0, {}, 0) and gw.connections == 0)


def test_start_ups_that_end_at_the_database_give_their_slot_back(
    gateway: RunningGateway,
) -> None:
    session = gateway.new_session()
    # a database that accepts and never answers, and the real one with a wrong password
    mute = socket.create_server(("127.0.0.1", 0))
    OPENED.append(mute)
    up = session.session.upstream
    variants = {
        "mute": replace(up, host="127.0.0.1", port=mute.getsockname()[1]),
        "refusing": replace(up, password="not-the-password"),
        "closed": replace(up, port=closed_port()),
    }
    limits = {"max_startups": 5, "connect_timeout": 0.5, "handshake_timeout": 1.0}
    with limited_gateway(gateway, **limits) as (gw, _):
        for name, upstream in variants.items():
            user = f"{session.user}_{name}"
            gateway.directory.add(replace(session.session, user=user, upstream=upstream))
            for _ in range(3):
                with pytest.raises(psycopg.OperationalError) as raised:
                    psycopg.connect(dsn(gw, session, user=user, connect_timeout="3"))
                assert "FATAL" in str(raised.value)  # 08006, 28000, 08006
        # and a client that gives up while the gateway waits for the mute database
        user = f"{session.user}_mute"
        for _ in range(3):
            sock = socket.create_connection(gw.address, 5)
            sock.sendall(wire.startup_message({"user": user, "database": "postgres"}))
            sock.close()
        wait_for(lambda: counts(gw) == (0, {}, 0) and gw.connections == 0)
        with psycopg.connect(dsn(gw, session)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def test_closing_the_gateway_mid_start_up_leaves_the_counts_at_zero(
    gateway: RunningGateway,
) -> None:
    with limited_gateway(gateway, max_startups=10) as (gw, _):
        idle = silent(gw, 4)
    assert counts(gw) == (0, {}, 0)
    for sock in idle:
        sock.close()


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("max_startups = 0\n", "gateway.max_startups: Input should be greater than or equal to 1"),
        ("max_connections = -5\n", "gateway.max_connections: Input should be greater than"),
        ('max_startups = "20"\n', "gateway.max_startups: Input should be a valid integer"),
        ("max_startups_per_source = 2.5\n", "gateway.max_startups_per_source: Input should be"),
        (
            "max_startups = 10\nmax_startups_per_source = 20\n",
            "gateway: max_startups_per_source (20) is more than max_startups (10)",
        ),
        (
            "max_startups = 200\nmax_connections = 100\n",
            "gateway: max_startups (200) is more than max_connections (100)",
        ),
    ],
)
def test_bad_limits_name_the_key(tmp_path: Path, lines: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(gateway_config(tmp_path, GATEWAY + lines))
    assert expected in raised.value.message


def test_limits_load_with_defaults_and_values(tmp_path: Path) -> None:
    section = load_settings(gateway_config(tmp_path)).gateway
    assert section is not None
    assert (section.max_startups, section.max_startups_per_source) == (100, 20)
    assert section.max_connections == 5000
    lines = "max_startups = 30\nmax_startups_per_source = 30\nmax_connections = 40\n"
    section = load_settings(gateway_config(tmp_path, GATEWAY + lines)).gateway
    assert section is not None
    assert (section.max_startups, section.max_startups_per_source) == (30, 30)
    assert section.max_connections == 40


RLIMIT_PROBE = """
import logging, resource, sys
logging.basicConfig(stream=sys.stdout, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, int(sys.argv[1])))
from dbaccess.gateway.process import raise_open_files_limit
print(raise_open_files_limit(int(sys.argv[2])))
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(
    ("hard", "max_connections", "warned"), [(1024, 400, False), (1024, 500, True)]
)
def test_start_raises_the_open_files_limit_and_says_when_it_is_too_low(
    hard: int, max_connections: int, warned: bool
) -> None:
    # in a process of its own: the limit is the process's
    out = subprocess.run(
        [sys.executable, "-c", RLIMIT_PROBE, str(hard), str(max_connections)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    assert out[-2:] == ["1024", "1024"]  # soft raised from 64 to the hard limit
    warning = [line for line in out if "open files limit" in line]
    assert bool(warning) == warned
    if warned:
        assert (
            "the open files limit is 1024, below the 1100 that max_connections = 500"
            in (warning[0])
        )
        assert "LimitNOFILE=1100" in warning[0] and "max_connections to 462" in warning[0]


def test_a_gateway_process_takes_its_limits_from_the_settings(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls")
    section = GATEWAY.replace("tls/gw.pem", str(certs.cert)).replace("tls/gw.key", str(certs.key))
    section += "max_startups = 2\nmax_startups_per_source = 2\nmax_connections = 3\n"
    settings = load_settings(gateway_config(tmp_path, section))
    (tmp_path / "state").mkdir()

    async def scenario() -> tuple[GatewayConfig, bytes]:
        running = await process.start(settings, lambda _store: MemorySink(), listen=LOCAL)
        try:
            idle = [await asyncio.open_connection(*running.address) for _ in range(2)]
            while running.gateway.startups < 2:
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection(*running.address)
            answer = await asyncio.wait_for(reader.read(), 5)
            for _, w in [*idle, (reader, writer)]:
                w.close()
            return running.gateway.config, answer
        finally:
            await running.stop()

    config, answer = asyncio.run(scenario())
    assert (config.max_startups, config.max_startups_per_source) == (2, 2)
    assert config.max_connections == 3
    assert b"C53300\0" in answer and b"max_startups = 2" in answer
