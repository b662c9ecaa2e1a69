"""TLS at the gateway: SSLRequest and direct TLS (libpq 17+ ``sslnegotiation=direct``), both
with ALPN "postgresql", and a direct TLS client without it refused as PostgreSQL 17 does."""

from __future__ import annotations

import socket
import ssl
import struct

import psycopg
import pytest

from tests.gateway.conftest import RunningGateway, assert_cancelled
from tests.gateway.test_postgres_gateway import recv_exact, wait_for

pytestmark = pytest.mark.integration


def client_context(gw: RunningGateway, alpn: list[str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(gw.certs.ca))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def test_psycopg_direct_tls_and_sslrequest(gateway: RunningGateway) -> None:
    assert psycopg.pq.version() >= 170000  # the bundled libpq knows sslnegotiation
    session = gateway.new_session()
    for negotiation in ("direct", "postgres"):
        dsn = gateway.dsn(
            session,
            sslmode="verify-full",
            sslrootcert=str(gateway.certs.ca),
            sslnegotiation=negotiation,
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT current_user").fetchone() == (session.upstream_user,)
    assert [r.sql for r in gateway.records(session)] == ["SELECT current_user"] * 2


def test_sslrequest_negotiates_alpn_postgresql(gateway: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        context = client_context(gateway, ["postgresql"])
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "postgresql"


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "other-alpn"])
def test_direct_tls_without_alpn_postgresql_is_refused(
    gateway: RunningGateway, alpn: list[str] | None
) -> None:
    session = gateway.new_session()
    before = gateway.gateway.connections
    raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    with client_context(gateway, alpn).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() is None
        params = b"user\0" + session.user.encode() + b"\0database\0postgres\0\0"
        body = struct.pack("!i", 196608) + params
        try:
            tls.sendall(struct.pack("!I", len(body) + 4) + body)
        except OSError:
            pass  # closed already
        head = recv_exact(tls, 5)
        assert head[:1] == b"E"
        message = recv_exact(tls, struct.unpack("!I", head[1:])[0] - 4)
        assert b"C08P01\0" in message and b"without ALPN" in message
        assert tls.recv(1) == b""
    assert wait_for(lambda: gateway.gateway.connections <= before)
    assert gateway.records(session) == []


def test_a_broken_client_hello_is_closed(gateway: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05hello")
        received = b""
        while chunk := raw.recv(100):  # a TLS alert at most, then the close
            received += chunk
        assert not received or received[:1] == b"\x15"  # an alert record


def test_cancel_over_direct_tls(gateway: RunningGateway) -> None:
    """libpq's new cancel API connects as the connection did: direct TLS, then CancelRequest."""
    session = gateway.new_session()
    dsn = gateway.dsn(
        session,
        sslmode="verify-full",
        sslrootcert=str(gateway.certs.ca),
        sslnegotiation="direct",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert_cancelled(conn, "SELECT pg_sleep(30)")
        assert conn.execute("SELECT 1").fetchone() == (1,)
