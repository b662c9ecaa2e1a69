"""TLS from the gateway to the database, as the target's sslmode says (libpq's meanings),
against a real PostgreSQL that speaks TLS and refuses its session users without it."""

from __future__ import annotations

import secrets
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import scramp

from dbaccess.broker.engines.postgres.checks import _connect
from dbaccess.broker.settings import TargetSection
from dbaccess.errors import ConfigError
from dbaccess.gateway.sessions import GatewaySession, ScramVerifier, Upstream
from dbaccess.gateway.upstream_tls import upstream_tls
from dbaccess.sandbox.postgres import PostgresServer
from dbaccess.sandbox.tls import TestCertificates as Certificates
from dbaccess.sandbox.tls import make_certificates
from tests.gateway.conftest import RunningGateway, Session, assert_cancelled
from tests.gateway.test_postgres_gateway import recv_exact

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[PostgresServer, Certificates]
]:  # fmt: skip
    certs = make_certificates(Path(tmp_path_factory.mktemp("upstream-tls-certs")))
    server = PostgresServer(Path(tmp_path_factory.mktemp("upstream-tls-pg")))
    server.tls = (certs.cert, certs.key)
    server.hba_first = ["hostnossl all +tls_only 127.0.0.1/32 reject"]  # TLS or nothing
    server.start()
    with server.connect() as admin:
        admin.execute("CREATE ROLE tls_only NOLOGIN")
    try:
        yield server, certs
    finally:
        server.stop()


def session_to(
    gw: RunningGateway,
    server: PostgresServer,
    sslmode: str,
    ca: Path | None,
    host: str,
    tls_only: bool = True,
) -> Session:
    tag = secrets.token_hex(4)
    user, password = f"tls_{tag}", secrets.token_urlsafe(24)
    member = " IN ROLE tls_only" if tls_only else ""
    with server.connect() as admin:
        admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'{member}")
    secret = secrets.token_urlsafe(24)
    session = GatewaySession(
        lease_id=f"lease-{tag}", person="alice@example.com", target="tls", role="readonly",
        user=f"alice_{tag}", verifier=ScramVerifier.for_secret(secret),
        upstream=Upstream(host, server.port, "postgres", user, password,
                          tls=upstream_tls(sslmode, ca, "target tls")),
    )  # fmt: skip
    gw.directory.add(session)
    return Session(session, secret)


def uses_tls(conn: psycopg.Connection[tuple[object, ...]]) -> object:
    row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    return None if row is None else row[0]


def refusal(gw: RunningGateway, session: Session) -> dict[str, str]:
    """The ErrorResponse's fields the gateway answers a login with (libpq keeps the SQLSTATE
    of a failed connection to itself, so this client speaks the protocol)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    with sock:
        params = b"user\0" + session.user.encode() + b"\0database\0postgres\0\0"
        body = struct.pack("!i", 196608) + params
        sock.sendall(struct.pack("!I", len(body) + 4) + body)

        def read() -> tuple[bytes, bytes]:
            head = recv_exact(sock, 5)
            return head[:1], recv_exact(sock, struct.unpack("!I", head[1:])[0] - 4)

        client = scramp.ScramClient(["SCRAM-SHA-256"], session.user, session.secret)
        assert read()[0] == b"R"
        first = client.get_client_first().encode()
        msg = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
        sock.sendall(b"p" + struct.pack("!I", len(msg) + 4) + msg)
        client.set_server_first(read()[1][4:].decode())
        final = client.get_client_final().encode()
        sock.sendall(b"p" + struct.pack("!I", len(final) + 4) + final)
        while True:
            kind, body = read()
            assert kind != b"Z", "the gateway let the session in"
            if kind == b"E":
                return {
                    field[:1].decode(): field[1:].decode() for field in body.split(b"\0") if field
                }


@pytest.mark.parametrize(
    ("sslmode", "host"),
    [("verify-full", "127.0.0.1"), ("verify-ca", "localhost"), ("require", "127.0.0.1"),
     ("prefer", "127.0.0.1")],
)  # fmt: skip
def test_the_gateway_speaks_tls_to_the_database(
    gateway: RunningGateway,
    tls_postgres: tuple[PostgresServer, Certificates],
    sslmode: str,
    host: str,
) -> None:
    server, certs = tls_postgres
    ca = certs.ca if sslmode.startswith("verify") else None
    session = session_to(gateway, server, sslmode, ca, host)
    with psycopg.connect(gateway.dsn(session), autocommit=True, connect_timeout=10) as conn:
        assert uses_tls(conn) is True
        # the gateway's CancelRequest goes to the database in TLS as the session did
        assert_cancelled(conn, "SELECT pg_sleep(20)")
        assert conn.execute("SELECT 42").fetchone() == (42,)


@pytest.mark.parametrize(
    ("sslmode", "host", "wrong_ca", "said"),
    [
        ("verify-full", "127.0.0.1", True, "certificate verify failed"),
        ("verify-full", "localhost", False, "certificate verify failed"),  # the name
        ("verify-ca", "127.0.0.1", True, "certificate verify failed"),
        ("require", "127.0.0.1", True, "certificate verify failed"),  # a CA: verify-ca
    ],
)
def test_a_database_that_cannot_be_verified_is_refused_quickly(
    gateway: RunningGateway,
    tls_postgres: tuple[PostgresServer, Certificates],
    tmp_path: Path,
    sslmode: str,
    host: str,
    wrong_ca: bool,
    said: str,
) -> None:
    server, certs = tls_postgres
    ca = make_certificates(tmp_path / "other").ca if wrong_ca else certs.ca
    session = session_to(gateway, server, sslmode, ca, host)
    started = time.monotonic()
    error = refusal(gateway, session)
    assert time.monotonic() - started < 5
    assert error["C"] == "08006"
    assert 'target "tls"' in error["M"] and said in error["M"], error["M"]
    with pytest.raises(psycopg.OperationalError, match=said) as refused:
        psycopg.connect(gateway.dsn(session), connect_timeout=10)
    for secret in (session.session.upstream.password, session.secret):
        assert secret not in str(refused.value) and secret not in error["M"]
    # no password was sent: the server saw no login attempt
    assert f"user={session.upstream_user}" not in server.log_path.read_text(errors="replace")


@pytest.mark.parametrize("sslmode", ["disable", "allow"])
def test_disable_and_allow_connect_in_plain_tcp(
    gateway: RunningGateway, tls_postgres: tuple[PostgresServer, Certificates], sslmode: str
) -> None:
    server, _ = tls_postgres
    session = session_to(gateway, server, sslmode, None, "127.0.0.1", tls_only=False)
    with psycopg.connect(gateway.dsn(session), autocommit=True, connect_timeout=10) as conn:
        assert uses_tls(conn) is False
    # a role the server admits only over TLS: the server's own refusal, passed on
    refused = session_to(gateway, server, sslmode, None, "127.0.0.1")
    error = refusal(gateway, refused)
    assert "pg_hba.conf rejects" in error["M"] and "no encryption" in error["M"], error


def test_require_refuses_a_database_without_tls(gateway: RunningGateway) -> None:
    # the suite's gateway database speaks no TLS: prefer goes on in plain TCP, require not
    plain = gateway.new_session()
    for sslmode, works in (("prefer", True), ("require", False), ("verify-full", False)):
        up = plain.session.upstream
        session = Session(
            GatewaySession(
                **{**plain.session.__dict__, "lease_id": f"{plain.session.lease_id}-{sslmode}",
                   "user": f"{plain.user}_{sslmode[:3]}",
                   "upstream": Upstream(up.host, up.port, up.database, up.user, up.password,
                                        tls=upstream_tls(sslmode, None, "target plain"))},
            ),
            plain.secret,
        )  # fmt: skip
        gateway.directory.add(session.session)
        if works:
            with psycopg.connect(gateway.dsn(session), connect_timeout=10) as conn:
                assert uses_tls(conn) is False
        else:
            error = refusal(gateway, session)
            assert error["C"] == "08006"
            assert "does not offer TLS" in error["M"] and "sslmode" in error["M"]


def test_a_database_silent_at_the_sslrequest_is_refused_in_connect_timeout(
    gateway: RunningGateway,
) -> None:
    # a listener that accepts and never answers: the gateway gives up after connect_timeout
    # (10 s in the suite) with an 08006, well before the client's handshake timeout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    with silent:
        plain = gateway.new_session()
        up = plain.session.upstream
        session = Session(
            GatewaySession(
                **{**plain.session.__dict__, "lease_id": f"{plain.session.lease_id}-silent",
                   "user": f"{plain.user}_silent",
                   "upstream": Upstream(up.host, silent.getsockname()[1], up.database,
                                        up.user, up.password,
                                        tls=upstream_tls("require", None, "target silent"))},
            ),
            plain.secret,
        )  # fmt: skip
        gateway.directory.add(session.session)
        started = time.monotonic()
        error = refusal(gateway, session)
        assert 9 < time.monotonic() - started < 14
        assert error["C"] == "08006" and "did not answer" in error["M"], error


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="cannot read sslrootcert"):
        upstream_tls("verify-full", missing, "target tls")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot read sslrootcert"):
        upstream_tls("verify-ca", garbage, "target tls")


def test_the_broker_verifies_the_database_with_sslrootcert(
    tls_postgres: tuple[PostgresServer, Certificates], tmp_path: Path
) -> None:
    server, certs = tls_postgres
    target = TargetSection.model_validate(
        {"engine": "postgres", "host": "127.0.0.1", "port": server.port,
         "database": "postgres", "sslmode": "verify-full", "sslrootcert": str(certs.ca),
         "provisioner": {"user": server.admin_user, "password_env": "UNUSED"},
         "roles": {"readonly": {"group_role": "ro"}}}
    )  # fmt: skip
    with _connect(target, server.admin_password) as conn:
        assert uses_tls(conn) is True
    other = make_certificates(tmp_path / "other").ca
    wrong = target.model_copy(update={"sslrootcert": other})
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(wrong, server.admin_password)
