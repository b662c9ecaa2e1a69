"""The client matrix of issue 14 through the gateway: pgcli, psycopg 3 (text, binary, named
prepared statements, pipeline), asyncpg, node-postgres and a JDBC-style named-statement
workload on the raw protocol; and the protocol cases only a real client shows (portals with
row limits, a 3.2 request, NOTICE/NOTIFY, Terminate, a client killed mid-result, a reader
that stops). Each test checks what the client got and the statement records; the last one
runs every workload on one session and finds 0 unaudited statements."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.gateway.conftest import HIGH_WATER, RunningGateway, Session
from tests.gateway.test_postgres_gateway import (
    psql,
    query,
    raw_login,
    recv_exact,
    upstream_backends,
    wait_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOOLS = str(Path(sys.executable).parent)  # pgcli comes with the dev extra


def client_env(gw: RunningGateway, session: Session, home: Path) -> dict[str, str]:
    return {
        "PATH": TOOLS + os.pathsep + os.environ["PATH"],
        "HOME": str(home),
        "PGHOST": "127.0.0.1",
        "PGPORT": str(gw.port),
        "PGUSER": session.user,
        "PGDATABASE": "postgres",
        "PGPASSWORD": session.secret,  # the environment, never argv
        "PGSSLMODE": "disable",
    }


# -- the workloads (each one client; the conformance test runs them all on one session) --


def pgcli_workload(gw: RunningGateway, session: Session, home: Path, tag: str) -> str:
    # pgcli -c runs the command and exits (no DDL: that would start its completion refresh)
    config = home / ".config/pgcli/config"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[main]\nkeyring = False\n")  # the test's secret stays out of it
    run = subprocess.run(
        [
            "pgcli",
            "--less-chatty",
            "-t",
            "-w",
            "-c",
            f"SELECT 'pgcli:' || current_user /* {tag} */;"
            f" SELECT 'n=' || count(*) FROM generate_series(1, 7) /* {tag} */",
        ],
        env=client_env(gw, session, home),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout + run.stderr


def psycopg_workload(gw: RunningGateway, session: Session, tag: str) -> list[object]:
    got: list[object] = []
    with psycopg.connect(gw.dsn(session), autocommit=True, prepare_threshold=0) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS pg3 (id int, note text) /* {tag} */")
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(f"INSERT INTO pg3 VALUES (%s, %s) /* {tag} */", (int(binary), "x"))
                sql = f"SELECT note, %s::text FROM pg3 WHERE id = %s /* {tag} */"
                cur.execute(sql, ("b", int(binary)))
                got.append(cur.fetchall())
        with conn.pipeline():
            cur = conn.execute(f"SELECT count(*) FROM pg3 /* {tag} */", binary=True)
            conn.execute(f"UPDATE pg3 SET note = %s /* {tag} */", ("y",))
        got.append(cur.fetchone())
    return got


async def asyncpg_workload(gw: RunningGateway, session: Session, tag: str) -> dict[str, object]:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=gw.port,
        user=session.user,
        password=session.secret,
        database="postgres",
        ssl=False,
    )
    out: dict[str, object] = {}
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS apg (id int, name text) /* {tag} */")
        await conn.executemany(
            f"INSERT INTO apg VALUES ($1, $2) /* {tag} */", [(i, f"a{i}") for i in range(10)]
        )
        rows = await conn.fetch(
            f"SELECT id, name FROM apg WHERE id >= $1 ORDER BY id /* {tag} */", 8
        )
        out["fetch"] = [tuple(r) for r in rows]
        stmt = await conn.prepare(f"SELECT name FROM apg WHERE id = $1 /* {tag} */")
        out["prepared"] = [await stmt.fetchval(3), await stmt.fetchval(4)]
        async with conn.transaction():
            cursor = conn.cursor(f"SELECT id FROM apg ORDER BY id /* {tag} */", prefetch=4)
            out["cursor"] = [r["id"] async for r in cursor]
        try:
            # at run time (a constant 1 / ($1 - 1) would fail at Bind, before any Execute)
            sql = f"SELECT 1 / (g - $1::int) FROM generate_series(1, 1) g /* {tag} */"
            await conn.fetchval(sql, 1)
        except asyncpg.DivisionByZeroError:
            out["error"] = "22012"
        buffer = io.BytesIO()
        await conn.copy_from_query(f"SELECT id FROM apg ORDER BY id /* {tag} */", output=buffer)
        out["copy"] = buffer.getvalue().decode().split()
    finally:
        await conn.close()
    return out


def node_workload(gw: RunningGateway, session: Session, home: Path, tag: str) -> object:
    env = {**client_env(gw, session, home), "NODE_PATH": str(ROOT / "tests/idp/node_modules")}
    run = subprocess.run(
        ["node", str(Path(__file__).with_name("node_client.cjs")), tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


# a JDBC-style driver on the raw protocol: named statement S_1, portals with a fetch size


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def parse(name: bytes, sql: str) -> bytes:
    return msg(b"P", name + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(portal: bytes, statement: bytes, *params: str) -> bytes:
    body = portal + b"\0" + statement + b"\0" + struct.pack("!hh", 0, len(params))
    for param in params:
        body += struct.pack("!i", len(param.encode())) + param.encode()
    return msg(b"B", body + struct.pack("!h", 0))


def execute(portal: bytes, max_rows: int = 0) -> bytes:
    return msg(b"E", portal + b"\0" + struct.pack("!i", max_rows))


SYNC = msg(b"S")


def until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    seen = []
    while True:
        head = recv_exact(sock, 5)
        body = recv_exact(sock, struct.unpack("!I", head[1:])[0] - 4)
        seen.append((head[:1], body))
        if head[:1] == b"Z":
            return seen


def kinds(messages: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(kind for kind, _ in messages)


def jdbc_workload(gw: RunningGateway, session: Session, tag: str) -> list[bytes]:
    sql = f"SELECT g FROM generate_series(1, $1::int) g /* {tag} */"
    sock = raw_login(gw, session)
    seen = []
    try:
        query(sock, "BEGIN")
        until_ready(sock)
        describe = msg(b"D", b"PC_1\0")
        sock.sendall(parse(b"S_1", sql) + bind(b"C_1", b"S_1", "5") + describe)
        sock.sendall(execute(b"C_1", 2) + SYNC)
        seen.append(kinds(until_ready(sock)))
        for _ in range(2):
            sock.sendall(execute(b"C_1", 2) + SYNC)
            seen.append(kinds(until_ready(sock)))
        sock.sendall(msg(b"C", b"PC_1\0") + bind(b"C_2", b"S_1", "3") + execute(b"C_2") + SYNC)
        seen.append(kinds(until_ready(sock)))
        query(sock, "COMMIT")
        until_ready(sock)
        sock.sendall(msg(b"X"))
        assert sock.recv(1) == b""  # the gateway closes after Terminate
    finally:
        sock.close()
    return seen


# -- the matrix -------------------------------------------------------------------------


def test_pgcli(gateway: RunningGateway, tmp_path: Path) -> None:
    session = gateway.new_session()
    out = pgcli_workload(gateway, session, tmp_path, "t")
    assert f"pgcli:{session.upstream_user}" in out
    assert "n=7" in out
    records = gateway.assert_all_audited(session)
    ours = [r for r in records if r.sql.startswith(("SELECT 'pgcli:'", "SELECT 'n='"))]
    assert [(r.kind, r.rows, r.sqlstate, r.status) for r in ours] == [
        ("query", 1, None, "completed"),
        ("query", 1, None, "completed"),
    ]
    assert upstream_backends(gateway, session) == 0


def test_psycopg_text_binary_prepared_and_pipeline(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    got = psycopg_workload(gateway, session, "t")
    assert got == [[("x", "b")], [("x", "b")], (2,)]
    records = gateway.assert_all_audited(session)
    assert [(r.kind, r.rows, r.sqlstate, r.status) for r in records] == [
        ("execute", None, None, "completed"),  # prepare_threshold=0: even the DDL
        ("execute", 1, None, "completed"),
        ("execute", 1, None, "completed"),
        ("execute", 1, None, "completed"),
        ("execute", 1, None, "completed"),
        ("execute", 1, None, "completed"),  # the pipeline: count, then update
        ("execute", 2, None, "completed"),
    ]
    assert records[2].sql == "SELECT note, $1::text FROM pg3 WHERE id = $2 /* t */"
    assert records[4].params == ("b", "\\x0001")  # the int in binary, the str as text
    assert records[6].sql == "UPDATE pg3 SET note = $1 /* t */"


def test_asyncpg_named_binary_cursor_and_copy(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    out = gateway_thread_free_run(asyncpg_workload(gateway, session, "t"))
    assert out == {
        "fetch": [(8, "a8"), (9, "a9")],
        "prepared": ["a3", "a4"],
        "cursor": list(range(10)),
        "error": "22012",
        "copy": [str(i) for i in range(10)],
    }
    records = gateway.assert_all_audited(session)
    summary = [(r.kind, r.rows, r.sqlstate) for r in records]
    assert summary == [
        ("query", None, None),  # CREATE TABLE (no arguments: a simple Query)
        *[("execute", 1, None)] * 10,  # executemany: one pipeline
        ("execute", 2, None),
        ("execute", 1, None),
        ("execute", 1, None),
        ("query", None, None),  # BEGIN
        ("execute", 4, None),  # the cursor's portal, 4 rows at a time (PortalSuspended)
        ("execute", 4, None),
        ("execute", 2, None),
        ("query", None, None),  # COMMIT
        ("execute", None, "22012"),
        ("copy", 10, None),
    ]
    assert records[1].params == ("\\x00000000", "\\x6130")  # asyncpg binds all in binary
    assert all(r.status == "completed" for r in records)
    assert upstream_backends(gateway, session) == 0


def gateway_thread_free_run(coro: object) -> dict[str, object]:
    """asyncpg on a loop of its own in this thread (the gateway has its own loop)."""
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_node_postgres(gateway: RunningGateway, tmp_path: Path) -> None:
    session = gateway.new_session()
    out = node_workload(gateway, session, tmp_path, "t")
    assert out == {
        "simple": [{"who": "node"}],
        "sum": [{"sum": 5}],
        "count": [{"n": 3}],
        "error": "22012",
    }
    records = gateway.assert_all_audited(session)
    assert [(r.kind, r.rows, r.sqlstate) for r in records] == [
        ("query", 1, None),
        ("execute", 1, None),
        ("query", None, None),
        *[("execute", 1, None)] * 3,  # the named statement, parsed once
        ("execute", 1, None),
        ("query", None, "22012"),
    ]
    assert records[1].params == ("2", "3")  # pg binds text
    assert upstream_backends(gateway, session) == 0


def test_jdbc_style_named_statement_with_fetch_size(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    seen = jdbc_workload(gateway, session, "t")
    # ParseComplete, BindComplete, RowDescription, 2 DataRows, PortalSuspended, Ready ...
    assert seen == [b"12TDDsZ", b"DDsZ", b"DCZ", b"32DDDCZ"]
    records = gateway.assert_all_audited(session)
    assert [(r.kind, r.rows, r.status) for r in records] == [
        ("query", None, "completed"),
        ("execute", 2, "completed"),  # suspended: the rows it returned
        ("execute", 2, "completed"),
        ("execute", 1, "completed"),
        ("execute", 3, "completed"),  # S_1 bound again to a new portal
        ("query", None, "completed"),
    ]
    assert {r.sql for r in records[1:5]} == {"SELECT g FROM generate_series(1, $1::int) g /* t */"}
    assert [r.params for r in records[1:5]] == [("5",)] * 3 + [("3",)]
    assert wait_for(lambda: upstream_backends(gateway, session) == 0)


# -- protocol cases ---------------------------------------------------------------------


def test_protocol_3_2_request_is_negotiated_down_to_3_0(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    assert psycopg.pq.version() >= 180000  # libpq 18 asks for 3.2 when told to
    dsn = gateway.dsn(session, max_protocol_version="3.2")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.full_protocol_version == 30000  # the server is PG 15
        assert conn.execute("SELECT 32").fetchone() == (32,)
    records = gateway.assert_all_audited(session)
    assert [(r.sql, r.rows) for r in records] == [("SELECT 32", 1)]


def test_notice_and_notify_pass_through(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    notices: list[str] = []
    with (
        psycopg.connect(gateway.dsn(session), autocommit=True) as listener,
        psycopg.connect(gateway.dsn(session), autocommit=True) as talker,
    ):
        listener.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        listener.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        listener.execute("LISTEN gwchannel")
        talker.execute("NOTIFY gwchannel, 'the payload'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert notices == ["hello 42"]
    assert got == [("gwchannel", "the payload")]
    records = gateway.assert_all_audited(session)
    assert sorted(r.sql for r in records) == [
        "DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$",
        "LISTEN gwchannel",
        "NOTIFY gwchannel, 'the payload'",
    ]
    assert all(r.status == "completed" and r.sqlstate is None for r in records)


def test_terminate_leaves_no_upstream_backend(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    before = gateway.gateway.connections
    conn = psycopg.connect(gateway.dsn(session), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None and upstream_backends(gateway, session) == 1
    conn.close()  # Terminate
    assert wait_for(lambda: upstream_backends(gateway, session) == 0)
    assert wait_for(lambda: gateway.gateway.connections == before)
    assert session.session.lease_id not in gateway.directory.live._by_lease
    # the backend got the Terminate, not a dropped socket
    log = gateway.postgres.log_path.read_text(errors="replace")
    assert "unexpected EOF" not in _lines_of(log, row[0])
    records = gateway.assert_all_audited(session)
    assert [r.status for r in records] == ["completed"]


def _lines_of(log: str, pid: int) -> str:
    return "\n".join(line for line in log.splitlines() if f"[{pid}]" in line)


def test_psql_killed_mid_copy_out_ends_upstream(gateway: RunningGateway, tmp_path: Path) -> None:
    session = gateway.new_session()
    before = gateway.gateway.connections
    client = subprocess.Popen(
        [
            "psql",
            "-X",
            "-c",
            "COPY (SELECT repeat('x', 1000) FROM generate_series(1, 5000000)) TO STDOUT",
        ],
        env=client_env(gateway, session, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert client.stdout is not None
        assert len(client.stdout.read(1024 * 1024)) == 1024 * 1024  # mid-result
        client.send_signal(signal.SIGKILL)
        client.wait(10)
    finally:
        client.kill()
        if client.stdout is not None:
            client.stdout.close()
    assert wait_for(lambda: upstream_backends(gateway, session) == 0), "upstream still there"
    assert wait_for(lambda: gateway.gateway.connections == before)
    records = gateway.assert_all_audited(session)
    assert [(r.kind, r.status) for r in records] == [("copy", "interrupted")]
    assert records[0].bytes_out >= 1024 * 1024  # what went out before the end


def test_stopped_reader_pauses_upstream_then_gets_every_row(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    sock = raw_login(gateway, session)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    rows = 100_000
    query(sock, f"SELECT repeat('x', 1000) FROM generate_series(1, {rows})")  # ~100 MB
    time.sleep(2)  # the client reads nothing

    async def state() -> tuple[int, bool]:
        (conn,) = [
            c
            for c in gateway.gateway._connections
            if c.session is not None and c.session.lease_id == session.session.lease_id
        ]
        assert conn.client.transport is not None and conn.upstream is not None
        assert conn.upstream.transport is not None
        return conn.client.transport.get_write_buffer_size(), conn.upstream.transport.is_reading()

    for _ in range(3):
        buffered, reading = gateway.call(state())
        assert 0 < buffered <= HIGH_WATER + 512 * 1024 and not reading
        time.sleep(0.2)
    with gateway.postgres.connect() as admin:
        waits = admin.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE usename = %s",
            (session.upstream_user,),
        ).fetchall()
    assert waits == [("ClientWrite",)]  # the database waits for us: nothing piles up here
    sock.settimeout(60)
    data_rows = 0
    for kind, _ in until_ready(sock):
        data_rows += kind == b"D"
    assert data_rows == rows
    sock.close()
    records = gateway.assert_all_audited(session)
    assert [(r.rows, r.status) for r in records] == [(rows, "completed")]
    assert records[0].bytes_out > rows * 1000


# -- conformance ------------------------------------------------------------------------


def test_conformance_every_statement_of_the_matrix_is_audited(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    """Every client on one session, mixed: the records match the server's own statement log
    one for one (log_statement = all), and every statement of the workload is there."""
    session = gateway.new_session()
    run = psql(
        gateway,
        session,
        "-c",
        "SELECT 'psql' /* c */",
        "-c",
        "CREATE TABLE IF NOT EXISTS pg3 (id int, note text) /* c */",
        tls=False,
    )
    assert run.returncode == 0, run.stderr
    pgcli_workload(gateway, session, tmp_path, "c")
    psycopg_workload(gateway, session, "c")
    gateway_thread_free_run(asyncpg_workload(gateway, session, "c"))
    node_workload(gateway, session, tmp_path, "c")
    jdbc_workload(gateway, session, "c")
    records = gateway.assert_all_audited(session)  # 0 unaudited, against the server's log
    # pgcli strips the comments off what it sends
    pgcli = ("SELECT 'pgcli:'", "SELECT 'n='")
    tagged = [r for r in records if "/* c */" in r.sql or r.sql.startswith(pgcli)]
    # the workload's known list, tagged: psql 2, pgcli 2, psycopg 7, asyncpg 19 (and BEGIN,
    # COMMIT), node 8, JDBC 4 (and BEGIN, COMMIT)
    assert len(tagged) == 2 + 2 + 7 + 19 + 8 + 4
    # the rest: the transactions of asyncpg and JDBC, and pgcli's own start-up queries
    # ("SELECT 1", "show time zone" in pgcli 4) on pgcli's connection
    (pgcli_connection,) = {r.connection for r in tagged if r.sql.startswith(pgcli)}
    untagged = [r for r in records if r not in tagged]
    assert [r.sql.rstrip(";") for r in untagged if r.connection != pgcli_connection] == [
        "BEGIN",
        "COMMIT",
        "BEGIN",
        "COMMIT",
    ]
    assert any(r.connection == pgcli_connection for r in untagged)
    assert wait_for(lambda: upstream_backends(gateway, session) == 0)
