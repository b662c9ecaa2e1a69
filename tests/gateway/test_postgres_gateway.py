"""Real clients through the gateway to the suite's PostgreSQL, and every statement audited."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
import scramp

from dbaccess.gateway.postgres import server, wire
from dbaccess.gateway.postgres.server import CLOSE_GRACE, MAX_PARAM_TEXT, MAX_PARAMS_TEXT
from tests.gateway.conftest import HIGH_WATER, RunningGateway, Session

pytestmark = pytest.mark.integration


def psql(
    gw: RunningGateway,
    session: Session,
    *args: str,
    tls: bool = True,
    stdin: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(gw.port),
        "PGUSER": session.user,
        "PGDATABASE": "postgres",
        "PGPASSWORD": session.secret,  # the test's own env, never argv
        "PGSSLMODE": "verify-full" if tls else "disable",
        "PGSSLROOTCERT": str(gw.certs.ca),
    }
    return subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-At", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        cwd=cwd,
    )


def test_psql_command_and_script_over_tls(gateway: RunningGateway, tmp_path: Path) -> None:
    session = gateway.new_session()
    one = psql(
        gateway,
        session,
        "-c",
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    assert one.returncode == 0, one.stderr
    # upstream the session's ephemeral user, over plain TCP (the sandbox server has no TLS)
    assert one.stdout.strip() == f"{session.upstream_user}|f"
    script = tmp_path / "script.sql"
    script.write_text(
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n"
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5) g;\n"
        "UPDATE items\n   SET name = upper(name)\n WHERE id <= 2;\n"
        "SELECT 1 / 0;\n"
        "SELECT count(*) FROM items;\n"
        "SELECT 1; SELECT 2;\n"
    )
    run = psql(gateway, session, "-f", str(script))
    assert run.returncode == 0, run.stderr
    assert "division by zero" in run.stderr
    assert run.stdout.split() == [
        "CREATE",
        "TABLE",
        "INSERT",
        "0",
        "5",
        "UPDATE",
        "2",
        "5",
        "1",
        "2",
    ]
    # one Query message with two statements: one record, the rows of both
    two = psql(gateway, session, "-c", "SELECT 1 UNION SELECT 2; SELECT 3")
    assert two.stdout.split() == ["1", "2", "3"], two.stderr
    records = gateway.assert_all_audited(session)
    assert [r.kind for r in records] == ["query"] * 9
    assert (
        records[2].sql == "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5) g;"
    )
    assert [r.rows for r in records[1:]] == [None, 5, 2, None, 1, 1, 1, 3]
    assert [r.sqlstate for r in records] == [None] * 4 + ["22012"] + [None] * 4
    assert all(r.status == "completed" and r.bytes_out > 0 for r in records)
    assert {(r.person, r.target, r.role) for r in records} == {
        ("alice@example.com", "pg-test", "readwrite")
    }


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_prepared_statements(gateway: RunningGateway, binary: bool) -> None:
    session = gateway.new_session()
    with psycopg.connect(gateway.dsn(session), autocommit=True, prepare_threshold=0) as conn:
        conn.execute("CREATE TABLE t (id int, note text)")
        with conn.cursor(binary=binary) as cur:
            for i in range(3):
                cur.execute("INSERT INTO t VALUES (%s, %s)", (i, f"note {i}"))
            cur.execute("SELECT id, note FROM t WHERE id >= %s ORDER BY id", (1,))
            assert cur.fetchall() == [(1, "note 1"), (2, "note 2")]
            with pytest.raises(psycopg.errors.DivisionByZero):  # at run time, not at Bind
                cur.execute("SELECT 1 / (id - %s) FROM t WHERE id = 1", (1,))
    records = gateway.assert_all_audited(session)
    assert [r.kind for r in records] == ["execute"] * 6
    assert records[1].sql == "INSERT INTO t VALUES ($1, $2)"
    # psycopg sends an int in binary even from a text cursor (int2 here)
    assert records[1].params == ("\\x0000", "note 0")
    assert records[4].rows == 2 and records[4].sqlstate is None
    assert records[5].sqlstate == "22012"


def test_copy_out_and_in_through_psql(gateway: RunningGateway, tmp_path: Path) -> None:
    session = gateway.new_session()
    data = "".join(f"{i}\tline {i}\n" for i in range(1000))
    (tmp_path / "in.tsv").write_text(data)
    run = psql(
        gateway,
        session,
        cwd=tmp_path,
        stdin="CREATE TABLE lines (id int, text text);\n"
        "\\copy lines FROM 'in.tsv'\n"
        "\\copy (SELECT * FROM lines ORDER BY id) TO 'out.tsv'\n",
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.tsv").read_text() == data
    records = gateway.assert_all_audited(session)
    copy_in, copy_out = records[1], records[2]
    assert (copy_in.kind, copy_in.rows, copy_in.bytes_in) == ("copy", 1000, len(data))
    assert (copy_out.kind, copy_out.rows) == ("copy", 1000)
    assert copy_out.bytes_out > len(data)


def test_pipeline_batch_with_an_error_midway(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        conn.execute("CREATE TABLE p (id int)")
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            for i in range(5):
                conn.execute("INSERT INTO p VALUES (%s)", (i,))
            conn.execute("SELECT 1 / (id - %s) FROM p WHERE id = 1", (1,))
            conn.execute("INSERT INTO p VALUES (%s)", (99,))  # skipped by the server
        # the batch is one implicit transaction up to its Sync: the error rolled it back
        assert conn.execute("SELECT count(*) FROM p").fetchone() == (0,)
    records = gateway.assert_all_audited(session)
    statuses = [(r.sql, r.status, r.sqlstate) for r in records]
    assert statuses[1:7] == [("INSERT INTO p VALUES ($1)", "completed", None)] * 5 + [
        ("SELECT 1 / (id - $1) FROM p WHERE id = 1", "completed", "22012")
    ]
    assert statuses[7] == ("INSERT INTO p VALUES ($1)", "not_run", None)


def test_cancel_request_really_cancels(gateway: RunningGateway) -> None:
    """psycopg's cancel_safe (its legacy cancel() blocks holding the GIL, which would
    starve this process's own gateway thread; a client in another process is psql's test
    below)."""
    session = gateway.new_session()
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 42").fetchone() == (42,)  # the session goes on
    records = gateway.assert_all_audited(session)
    assert [(r.sql, r.sqlstate) for r in records] == [
        ("SELECT pg_sleep(30)", "57014"),
        ("SELECT 42", None),
    ]


def test_ctrl_c_in_psql_cancels_through_the_gateway(gateway: RunningGateway) -> None:
    """psql sends a CancelRequest of its own on SIGINT, over a connection of its own."""
    session = gateway.new_session()
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": "127.0.0.1",
        "PGPORT": str(gateway.port),
        "PGUSER": session.user,
        "PGDATABASE": "postgres",
        "PGPASSWORD": session.secret,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(gateway.certs.ca),
    }
    started = time.monotonic()
    client = subprocess.Popen(
        ["psql", "-X", "-At", "-c", "SELECT pg_sleep(30)"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=15)
    finally:
        client.kill()
    assert time.monotonic() - started < 10
    assert "canceling statement due to user request" in err, err
    records = gateway.assert_all_audited(session)
    assert [(r.sql, r.sqlstate) for r in records] == [("SELECT pg_sleep(30)", "57014")]


def test_wrong_secret_fails_without_an_upstream_connection(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    before = gateway.postgres.log_path.read_text(errors="replace").count(session.upstream_user)
    for dsn in (
        gateway.dsn(session, password="not-the-secret"),
        gateway.dsn(session, user="nobody_here"),
    ):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn, connect_timeout=5)
    time.sleep(0.3)
    after = gateway.postgres.log_path.read_text(errors="replace").count(session.upstream_user)
    assert after == before  # the database never heard of the attempt
    assert gateway.records(session) == []


def test_revocation_ends_the_connection_with_57P01(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert gateway.directory.end(session.session.lease_id, "the lease was revoked") == 1
        time.sleep(0.2)
        with pytest.raises(psycopg.OperationalError, match="the lease was revoked"):
            conn.execute("SELECT 2")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(gateway.dsn(session), connect_timeout=5)


# -- a raw client: for what libpq never does (stop reading, vanish mid-result) -------------


def raw_login(gw: RunningGateway, session: Session) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
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
    while read()[0] != b"Z":
        pass
    return sock


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the gateway closed the connection"
        data += chunk
    return data


def query(sock: socket.socket, sql: str) -> None:
    body = sql.encode() + b"\0"
    sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)


def upstream_backends(gw: RunningGateway, session: Session) -> int:
    with gw.postgres.connect() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (session.upstream_user,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(predicate: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_slow_reader_is_backpressured_and_vanishing_client_ends_upstream(
    gateway: RunningGateway,
) -> None:
    session = gateway.new_session()
    sock = raw_login(gateway, session)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    query(sock, "SELECT repeat('x', 1000) FROM generate_series(1, 500000)")  # ~500 MB
    time.sleep(2)  # the client reads nothing

    async def buffered() -> list[int]:
        return [
            c.client.transport.get_write_buffer_size()
            for c in gateway.gateway._connections
            if c.session is not None
            and c.session.lease_id == session.session.lease_id
            and c.client.transport is not None
        ]

    sizes = [gateway.call(buffered()) for _ in range(5)]
    # bounded by the high-water mark plus the one chunk read before the pause
    assert all(0 < s[0] <= HIGH_WATER + 512 * 1024 for s in sizes), sizes
    sock.close()  # vanish mid-result
    assert wait_for(lambda: upstream_backends(gateway, session) == 0), "upstream still there"
    records = gateway.assert_all_audited(session)
    assert [r.status for r in records] == ["interrupted"]


def test_revoked_connection_of_a_reader_that_stopped_is_closed_within_the_grace(
    gateway: RunningGateway,
) -> None:
    """close() waits for the write buffer to drain: a client that stopped reading would
    keep the socket (and the buffered rows) at the gateway until it reads again."""
    session = gateway.new_session()
    sock = raw_login(gateway, session)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    query(sock, "SELECT repeat('x', 1000) FROM generate_series(1, 500000)")
    time.sleep(1)  # the buffers fill up: the client reads nothing

    async def open_to_the_client() -> int:
        return sum(
            1
            for side in gateway.gateway.open_sides
            if side is side.conn.client and side.conn.number == number
        )

    async def number_of_the_connection() -> int:
        (connection,) = [
            c
            for c in gateway.gateway._connections
            if c.session is not None and c.session.lease_id == session.session.lease_id
        ]
        return connection.number

    try:
        number = gateway.call(number_of_the_connection())
        assert gateway.directory.end(session.session.lease_id, "the lease was revoked") == 1
        time.sleep(0.3)
        assert gateway.call(open_to_the_client()) == 1, "closed at once: the test shows nothing"
        assert wait_for(lambda: gateway.call(open_to_the_client()) == 0, CLOSE_GRACE + 2), (
            "the gateway kept the socket of a revoked connection whose client stopped reading"
        )
    finally:
        sock.close()


def test_bind_parameters_kept_in_a_record_are_bounded(gateway: RunningGateway) -> None:
    """A Bind may carry 65535 parameters (more than a signed 16-bit count reads): the
    record keeps their first MAX_PARAMS_TEXT characters in all and counts the rest."""
    session = gateway.new_session()
    many = 40_000  # over 32767: a count read as signed would show none
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        row = conn.execute(
            "SELECT cardinality(ARRAY[" + ",".join(["%s::int"] * many) + "])", [1] * many
        ).fetchone()
        assert row == (many,)
        big = ["y" * 100_000] * 100
        row = conn.execute("SELECT length(" + "||".join(["%s::text"] * 100) + ")", big).fetchone()
        assert row == (100 * 100_000,)
    records = gateway.assert_all_audited(session)
    assert len(records) == 2
    for record, count in zip(records, (many, 100), strict=True):
        assert record.params is not None
        *kept, marker = record.params
        assert marker == f"<{count - len(kept)} more parameter(s) not kept>"
        shown = sum(len(p or "") for p in kept)
        assert MAX_PARAMS_TEXT <= shown <= MAX_PARAMS_TEXT + MAX_PARAM_TEXT
    assert all(len(p or "") == MAX_PARAM_TEXT for p in records[1].params[:-1])


def read_until_ready(sock: socket.socket) -> bytes:
    """The server's messages up to ReadyForQuery; its transaction status."""
    while True:
        head = recv_exact(sock, 5)
        body = recv_exact(sock, struct.unpack("!I", head[1:])[0] - 4)
        if head[:1] == b"Z":
            return body


def bind(portal: str, statement: str = "") -> bytes:
    return wire.message(b"B", wire.cstring(portal) + wire.cstring(statement) + b"\0" * 6)


def test_portals_are_forgotten_when_their_transaction_ends(gateway: RunningGateway) -> None:
    """The server drops a transaction's portals at its end; the gateway's copies (SQL and
    parameters, for the records) go then too, or a client that never closes them grows the
    gateway without bound. One still open in a transaction keeps its text."""
    session = gateway.new_session()
    sock = raw_login(gateway, session)

    async def portals() -> set[bytes]:
        (connection,) = [
            c
            for c in gateway.gateway._connections
            if c.session is not None and c.session.lease_id == session.session.lease_id
        ]
        return set(connection.portals)

    try:
        parse = wire.message(b"P", wire.cstring("") + wire.cstring("SELECT 7") + b"\0\0")
        sock.sendall(parse + b"".join(bind(f"p{i}") for i in range(100)) + SYNC)
        assert read_until_ready(sock) == b"I"
        assert gateway.call(portals()) == set()
        query(sock, "BEGIN")
        assert read_until_ready(sock) == b"T"
        sock.sendall(parse + bind("kept") + SYNC)
        assert read_until_ready(sock) == b"T"
        assert gateway.call(portals()) == {b"kept"}
        execute = wire.message(b"E", wire.cstring("kept") + b"\0\0\0\0")
        sock.sendall(execute + SYNC)
        assert read_until_ready(sock) == b"T"
        query(sock, "COMMIT")
        assert read_until_ready(sock) == b"I"
        assert gateway.call(portals()) == set()
    finally:
        sock.close()
    records = gateway.assert_all_audited(session)
    assert ("execute", "SELECT 7", 1) in [(r.kind, r.sql, r.rows) for r in records]


def test_prepared_statements_text_is_bounded(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_PREPARED_TEXT", 100_000)
    session = gateway.new_session()
    pad = "z" * 25_000

    async def held() -> int:
        (connection,) = [
            c
            for c in gateway.gateway._connections
            if c.session is not None and c.session.lease_id == session.session.lease_id
        ]
        return connection.statement_text

    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        # psycopg deallocates (with SQL) what falls out of its cache: freed at the gateway
        conn.prepared_max = 2
        for i in range(10):
            assert conn.execute(f"SELECT {i}, '{pad}'", prepare=True).fetchone() == (i, pad)
        assert gateway.call(held()) <= 3 * 25_100
        conn.execute("DISCARD ALL")
        assert gateway.call(held()) == 0
        conn.prepared_max = 100
        with pytest.raises(psycopg.OperationalError, match="prepared statements' text"):
            for i in range(10):
                conn.execute(f"SELECT {i} AS m, '{pad}'", prepare=True)
    gateway.assert_all_audited(session)


def test_deallocate_by_name_frees_the_statement_at_the_gateway(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    sock = raw_login(gateway, session)

    async def names() -> set[bytes]:
        (connection,) = [
            c
            for c in gateway.gateway._connections
            if c.session is not None and c.session.lease_id == session.session.lease_id
        ]
        return set(connection.statements)

    def parse(name: str) -> bytes:
        return wire.message(b"P", wire.cstring(name) + wire.cstring("SELECT 1") + b"\0\0")

    try:
        sock.sendall(parse("MixedCase") + parse("lower") + parse("kept") + SYNC)
        assert read_until_ready(sock) == b"I"
        assert gateway.call(names()) == {b"MixedCase", b"lower", b"kept"}
        query(sock, 'DEALLOCATE "MixedCase"; DEALLOCATE PREPARE LOWER')
        assert read_until_ready(sock) == b"I"
        assert gateway.call(names()) == {b"kept"}
        query(sock, "DEALLOCATE nosuch")  # fails at the server: nothing else goes
        assert read_until_ready(sock) == b"I"
        assert gateway.call(names()) == {b"kept"}
    finally:
        sock.close()


SYNC = wire.message(b"S")


@pytest.mark.parametrize(
    ("method", "said"),
    [
        ("password", "sends the session user's password by SCRAM-SHA-256 only"),
        ("trust", "let the gateway in without SCRAM-SHA-256"),
    ],
)
def test_the_upstream_password_goes_by_scram_only(
    gateway: RunningGateway, method: str, said: str
) -> None:
    """A server (or a machine in the middle) that asks for the password in clear, or lets
    anyone in, gets nothing: the gateway refuses before sending a password."""
    session = gateway.new_session()
    hba = gateway.postgres.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {session.upstream_user} 127.0.0.1/32 {method}\n" + original)
    try:
        with gateway.postgres.connect() as admin:
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the postmaster reloads asynchronously
        with pytest.raises(psycopg.OperationalError, match=said):
            psycopg.connect(gateway.dsn(session), connect_timeout=10)
    finally:
        hba.write_text(original)
        with gateway.postgres.connect() as admin:
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
