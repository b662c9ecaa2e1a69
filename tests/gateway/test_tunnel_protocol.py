"""The tunnel's protocol side in-process, in front of the suite's gateway (conftest.py):
the loopback start-up, the gateway's TLS checked as verify-full, a session the gateway
no longer knows replaced for the same connection. (tests/gateway/test_tunnel.py runs the
whole command against the broker.)"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from dbaccess.client.tunnel.keeper import SessionKeeper
from dbaccess.client.tunnel.postgres import LocalLogin, Tunnel
from dbaccess.gateway.postgres import wire
from dbaccess.sandbox.tls import make_certificates
from tests.gateway.conftest import RunningGateway, Session

pytestmark = pytest.mark.integration
LOCAL_SECRET = "local-secret-for-the-gui"


@dataclass
class Grant:
    """What the broker's SessionGranted gives the tunnel."""

    id: str
    host: str
    port: int
    database: str
    db_user: str
    password: SecretStr
    ca_certificate: str
    expires_at: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(hours=1))


@dataclass
class InProcess:
    port: int
    sessions: list[Session]
    warnings: list[str]
    ca: str = ""
    host: str = "127.0.0.1"

    def dsn(self, **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": "postgres",
            "user": "dbaccess",
            "password": LOCAL_SECRET,
            "sslmode": "disable",
            "connect_timeout": "10",
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())


@pytest.fixture
def tunnel(gateway: RunningGateway) -> Iterator[InProcess]:
    state = InProcess(port=0, sessions=[], warnings=[], ca=gateway.certs.ca.read_text())

    def obtain() -> Grant:
        made = gateway.new_session()
        state.sessions.append(made)
        return Grant(
            id=made.session.lease_id,
            host=state.host,
            port=gateway.port,
            database="postgres",
            db_user=made.user,
            password=SecretStr(made.secret),
            ca_certificate=state.ca,
        )

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    keeper = SessionKeeper(obtain)
    served = Tunnel(
        LocalLogin.for_secret("dbaccess", "postgres", LOCAL_SECRET),
        keeper,
        warn=state.warnings.append,
    )

    async def start() -> asyncio.Server:
        return await asyncio.start_server(served.handle, "127.0.0.1", 0)

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:

        async def stop() -> None:
            server.close()
            await served.aclose()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_query_goes_through_on_one_session(tunnel: InProcess) -> None:
    for _ in range(3):
        with psycopg.connect(tunnel.dsn()) as conn:
            assert conn.execute("select 40 + 2").fetchone() == (42,)
    assert len(tunnel.sessions) == 1


def test_a_session_the_gateway_ended_is_replaced_for_that_very_connection(
    tunnel: InProcess, gateway: RunningGateway
) -> None:
    with psycopg.connect(tunnel.dsn()) as conn:
        first = conn.execute("select current_user").fetchone()
    gateway.directory.end(tunnel.sessions[0].session.lease_id, "revoked")
    with psycopg.connect(tunnel.dsn()) as conn:  # 28P01 at the gateway, then a fresh one
        second = conn.execute("select current_user").fetchone()
    assert first != second and len(tunnel.sessions) == 2


def test_the_gateways_certificate_must_verify_against_the_sessions_ca(
    tunnel: InProcess, tmp_path: Path
) -> None:
    tunnel.ca = make_certificates(tmp_path / "other").ca.read_text()
    with pytest.raises(psycopg.OperationalError, match="certificate does not verify"):
        psycopg.connect(tunnel.dsn())


def test_the_gateways_certificate_must_name_the_address_connected_to(tunnel: InProcess) -> None:
    tunnel.host = "localhost"  # the certificate is for 127.0.0.1 only
    with pytest.raises(psycopg.OperationalError, match="certificate does not verify"):
        psycopg.connect(tunnel.dsn())


def _raw(port: int, *packets: bytes, messages: int) -> bytes:
    """The answer to ``packets``: the first byte after each but the last, then ``messages``
    whole messages."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        answer = b""
        for packet in packets[:-1]:
            sock.sendall(packet)
            answer += sock.recv(1)
        sock.sendall(packets[-1])
        rest = b""
        while len(list(wire.split_messages(rest))) < messages:
            chunk = sock.recv(4096)
            assert chunk, "the tunnel closed the connection"
            rest += chunk
        return answer + rest


def test_sslrequest_is_answered_n_and_protocol_3_2_is_negotiated_down(tunnel: InProcess) -> None:
    ssl_request = struct.pack("!ii", 8, wire.SSL_REQUEST)
    body = struct.pack("!i", (3 << 16) | 2)
    body += b"user\0dbaccess\0database\0postgres\0_pq_.x\0y\0\0"
    startup = struct.pack("!I", len(body) + 4) + body
    answer = _raw(tunnel.port, ssl_request, startup, messages=2)
    assert answer[:1] == b"N"
    kinds = [kind for kind, _, _ in wire.split_messages(answer[1:])]
    assert kinds == [ord("v"), ord("R")]  # NegotiateProtocolVersion, then SASL


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"user": "postgres"}, 'tunnel\'s user is "dbaccess"'),
        ({"dbname": "template1"}, 'for database "postgres"'),
        ({"replication": "database"}, "replication connections are not allowed"),
        ({"password": "guess"}, 'password authentication failed for user "dbaccess"'),
    ],
)
def test_what_the_tunnel_refuses_before_any_session(
    tunnel: InProcess, extra: dict[str, Any], expected: str
) -> None:
    with pytest.raises(psycopg.OperationalError, match=expected):
        psycopg.connect(tunnel.dsn(**extra))
    assert tunnel.sessions == []  # no broker call for a refused connection


def test_another_local_user_is_turned_away_even_with_the_secret(tunnel: InProcess) -> None:
    # the secret phished, or a SCRAM exchange relayed: from another uid it is no use. A
    # real process of another user (the suite runs as root in CI: it becomes nobody)
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")  # CI runs as root
    nobody = pwd.getpwnam("nobody")
    # psql: a binary every user may run (the suite's own tree may be closed to nobody)
    run = subprocess.run(
        ["psql", "-X", "-At", "-c", "SELECT 'logged in'", tunnel.dsn()],
        capture_output=True,
        text=True,
        timeout=60,
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        cwd="/",
        env={"PATH": os.environ["PATH"], "HOME": "/"},
        check=False,
    )
    assert run.returncode != 0 and "logged in" not in run.stdout, run.stdout
    assert "serves only the local user who started it" in run.stderr, run.stderr
    assert tunnel.sessions == []  # turned away before any session was asked for
    assert tunnel.warnings == [
        f"refused a connection from another local user (uid {nobody.pw_uid})"
    ]
    # and this user's own client still logs in
    with psycopg.connect(tunnel.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
