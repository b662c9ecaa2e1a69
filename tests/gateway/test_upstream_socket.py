"""The gateway next to the database reaches it by its Unix socket (``gateway_socket``),
against a real PostgreSQL whose session users may not log in over TCP at all: no network
path for them, and none needed."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import psycopg
import pytest

from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.errors import ConfigError
from dbaccess.gateway.sessions import GatewaySession, ScramVerifier, Upstream
from dbaccess.gateway.store_directory import StoreDirectory
from dbaccess.gateway.upstream_socket import owner_uid
from dbaccess.gateway.upstream_tls import upstream_tls
from dbaccess.sandbox.postgres import PostgresServer
from tests.gateway.conftest import RunningGateway, Session, assert_cancelled
from tests.gateway.test_gateway_settings import gateway_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def socket_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(Path(tmp_path_factory.mktemp("upstream-socket-pg")))
    server.socket_dir = Path(tmp_path_factory.mktemp("upstream-socket")) / "run"
    server.hba_first = ["host all +socket_only 127.0.0.1/32 reject"]  # the socket or nothing
    server.start()
    with server.connect() as admin:
        admin.execute("CREATE ROLE socket_only NOLOGIN")
    try:
        yield server
    finally:
        server.stop()


def session_by_socket(
    gw: RunningGateway, server: PostgresServer, socket: str | None = None, owner: int | None = None
) -> tuple[Session, str]:
    tag = secrets.token_hex(4)
    user, password = f"sock_{tag}", secrets.token_urlsafe(24)
    with server.connect() as admin:
        admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE socket_only")
    secret = secrets.token_urlsafe(24)
    session = GatewaySession(
        lease_id=f"lease-{tag}", person="alice@example.com", target="local", role="readonly",
        user=f"alice_{tag}", verifier=ScramVerifier.for_secret(secret),
        upstream=Upstream("127.0.0.1", server.port, "postgres", user, password,
                          socket=str(server.socket_path) if socket is None else socket,
                          socket_owner=server.uid if owner is None else owner),
    )  # fmt: skip
    gw.directory.add(session)
    return Session(session, secret), password


def test_the_gateway_reaches_the_database_by_its_socket(
    gateway: RunningGateway, socket_postgres: PostgresServer
) -> None:
    session, password = session_by_socket(gateway, socket_postgres)
    # the session user has no way in over TCP, even with its real password
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        psycopg.connect(
            host="127.0.0.1", port=socket_postgres.port, dbname="postgres",
            user=session.upstream_user, password=password, sslmode="disable", connect_timeout=10,
        )  # fmt: skip
    with psycopg.connect(gateway.dsn(session), autocommit=True, connect_timeout=10) as conn:
        # the server saw a Unix-socket connection: no client address
        row = conn.execute(
            "SELECT client_addr IS NULL, current_user FROM pg_stat_activity "
            "WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == (True, session.upstream_user)
        # a CancelRequest goes the same way (a fresh connection to the socket)
        assert_cancelled(conn, "SELECT pg_sleep(20)")
        assert conn.execute("SELECT 42").fetchone() == (42,)
    records = gateway.records(session)
    assert [r.sql for r in records][-2:] == ["SELECT pg_sleep(20)", "SELECT 42"]
    assert records[-2].sqlstate == "57014" and records[-1].rows == 1


def test_a_missing_socket_is_a_clear_refusal(
    gateway: RunningGateway, socket_postgres: PostgresServer, tmp_path: Path
) -> None:
    session, _ = session_by_socket(gateway, socket_postgres, str(tmp_path / ".s.PGSQL.5432"))
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect(gateway.dsn(session), connect_timeout=10)
    assert "the gateway cannot reach the database (No such file or directory)" in str(raised.value)


def test_a_socket_has_no_tls_to_ask_for() -> None:
    with pytest.raises(ValueError, match="Unix socket has no TLS"):
        Upstream("db", 5432, "postgres", "u", "p", tls=upstream_tls("require", None, "t"),
                 socket="/run/postgresql/.s.PGSQL.5432", socket_owner=0)  # fmt: skip
    with pytest.raises(ValueError, match="goes with the uid that serves it"):
        Upstream("db", 5432, "postgres", "u", "p", socket="/run/postgresql/.s.PGSQL.5432")


@pytest.mark.parametrize(
    ("line", "access", "expected"),
    [
        (
            'gateway_socket = "run/.s.PGSQL.5432"',
            "gateway",
            "targets.demo.gateway_socket: 'run/.s.PGSQL.5432' is not an absolute path",
        ),
        (
            f'gateway_socket = "/{"d" * 100}/.s.PGSQL.5432"',
            "gateway",
            "is longer than a Unix socket's path may be (107 bytes)",
        ),
        (
            'gateway_socket = "/run/postgresql/.s.PGSQL.5432"\ngateway_socket_owner = "postgres"',
            "direct",
            'gateway_socket is for access = "gateway" targets',
        ),
        (
            'gateway_socket = "/run/postgresql/.s.PGSQL.5432"',
            "gateway",
            "gateway_socket and gateway_socket_owner go together",
        ),
        ('gateway_socket_owner = "postgres"', "gateway", "go together"),
        (
            'gateway_socket = "/run/postgresql/.s.PGSQL.5432"\ngateway_socket_owner = "a b"',
            "gateway",
            "targets.demo.gateway_socket_owner: String should match pattern",
        ),
    ],
)
def test_bad_gateway_sockets_name_the_key(
    tmp_path: Path, line: str, access: str, expected: str
) -> None:
    path = gateway_config(tmp_path, access=access)
    path.write_text(path.read_text().replace('database = "demo"', f'database = "demo"\n{line}'))
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert expected in str(raised.value)


def test_a_socket_target_needs_no_tls_of_the_gateway(tmp_path: Path) -> None:
    """sslmode and sslrootcert stay the broker's (over host:port): a CA the gateway could
    not even read does not stop it, and its sessions go to the socket in the clear."""
    path = gateway_config(tmp_path)
    path.write_text(path.read_text().replace(
        'access = "gateway"',
        'access = "gateway"\nsslmode = "verify-full"\nsslrootcert = "absent-ca.pem"\n'
        'gateway_socket = "/run/postgresql/.s.PGSQL.5432"\ngateway_socket_owner = "0"',
    ))  # fmt: skip
    settings = load_settings(path)
    assert settings.targets["demo"].gateway_socket == Path("/run/postgresql/.s.PGSQL.5432")
    StoreDirectory(cast(Store, None), settings, "k" * 40)  # over host:port, it would raise


def test_a_socket_another_user_serves_is_not_used(
    gateway: RunningGateway, socket_postgres: PostgresServer, tmp_path: Path
) -> None:
    """A socket someone else put where the database's should be (a directory made again
    after a reboot, /tmp): the kernel says who serves it, and no login byte goes there."""
    path = tmp_path / ".s.PGSQL.5432"
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    planted.bind(str(path))
    planted.listen(4)
    planted.settimeout(10)
    with planted:
        other = os.getuid() + 1  # served by us, expected from another: the same refusal
        session, _ = session_by_socket(gateway, socket_postgres, str(path), owner=other)
        with pytest.raises(psycopg.OperationalError) as raised:
            psycopg.connect(gateway.dsn(session), connect_timeout=10)
        assert "its socket is not the database's" in str(raised.value)
        conn, _ = planted.accept()
        with conn:
            conn.settimeout(5)
            assert conn.recv(1024) == b""  # closed before any byte: no startup, no SCRAM


def test_the_socket_owner_is_a_name_or_a_uid_of_this_host(tmp_path: Path) -> None:
    assert owner_uid("root") == 0 and owner_uid("0") == 0 and owner_uid("4242") == 4242
    path = gateway_config(tmp_path)
    path.write_text(path.read_text().replace(
        'access = "gateway"',
        'access = "gateway"\ngateway_socket = "/run/postgresql/.s.PGSQL.5432"\n'
        'gateway_socket_owner = "no_such_user_here"',
    ))  # fmt: skip
    with pytest.raises(ConfigError, match="gateway_socket_owner 'no_such_user_here' is no user"):
        StoreDirectory(cast(Store, None), load_settings(path), "k" * 40)
