"""What an attacker's review of the gateway found, each against the real gateway and
PostgreSQL: floods before login, a FunctionCall past the guardrails, texts the classifier
must not choke on, Executes recorded with a text the server never ran (a duplicate or
failed Parse, a name past 63 bytes, a DEALLOCATE in a comment, a Close an error skipped),
a database whose own settings defeat the parser, and a client that never reads."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import psycopg
import pytest

from dbaccess.gateway.guardrails import Policy, StatementClass
from dbaccess.gateway.postgres import wire
from dbaccess.gateway.postgres.server import _ClientSide
from tests.gateway.conftest import RunningGateway, Session
from tests.gateway.test_guardrails import guarded
from tests.gateway.test_postgres_gateway import query, raw_login, recv_exact

pytestmark = pytest.mark.integration

C = StatementClass
READ_WRITE = Policy(allowed=frozenset({C.READ, C.WRITE}))


def read_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Every message up to and with the next ReadyForQuery."""
    got = []
    while True:
        head = recv_exact(sock, 5)
        body = recv_exact(sock, struct.unpack("!I", head[1:])[0] - 4)
        got.append((head[:1], body))
        if head[:1] == b"Z":
            return got


def errors(messages: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    return [wire.error_fields(body) for kind, body in messages if kind == b"E"]


def parse(name: bytes, sql: str) -> bytes:
    return wire.message(b"P", name + b"\0" + sql.encode() + b"\0\0\0")


def bind_execute(statement: bytes) -> bytes:
    bind = wire.message(b"B", b"\0" + statement + b"\0" + b"\0\0\0\0\0\0")
    return bind + wire.message(b"E", b"\0\0\0\0\0") + wire.message(b"S")


SYNC = wire.message(b"S")


def startup(gw: RunningGateway, session: Session) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    body = struct.pack("!i", 196608) + b"user\0" + session.user.encode() + b"\0\0"
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    head = recv_exact(sock, 5)
    recv_exact(sock, struct.unpack("!I", head[1:])[0] - 4)  # the SASL offer
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the gateway sent before closing, which it must do within ``seconds``."""
    sock.settimeout(seconds)
    got = b""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"still open after {seconds} s")


def test_a_declared_4_gib_sasl_message_is_refused_at_its_header(gateway: RunningGateway) -> None:
    with startup(gateway, gateway.new_session()) as sock:
        sock.sendall(b"p\xff\xff\xff\xff" + b"x" * 1000)
        said = closed_within(sock, 5)  # not after the 30 s handshake timeout
        assert b"invalid start-up" in said


def test_a_sasl_message_one_byte_over_the_limit_is_refused_before_its_body(
    gateway: RunningGateway,
) -> None:
    from dbaccess.gateway.postgres.server import MAX_HANDSHAKE_MESSAGE

    with startup(gateway, gateway.new_session()) as sock:
        sock.sendall(b"p" + struct.pack("!I", MAX_HANDSHAKE_MESSAGE + 1))  # no body at all
        assert b"invalid start-up" in closed_within(sock, 5)


def function_call(oid: int, *args: bytes) -> bytes:
    body = struct.pack("!iHH", oid, 1, 0) + struct.pack("!H", len(args))
    for arg in args:
        body += struct.pack("!i", len(arg)) + arg
    return wire.message(b"F", body + struct.pack("!H", 0))


def test_a_function_call_by_oid_is_refused_for_a_checked_role(gateway: RunningGateway) -> None:
    session = guarded(gateway, READ_WRITE, role="readwrite")
    with raw_login(gateway, session) as sock:
        # set_config('standard_conforming_strings', 'off', false) by oid 2078, pipelined with a
        # text that lexes as a DROP only once the server reads backslashes as escapes
        sock.sendall(
            function_call(2078, b"standard_conforming_strings", b"off", b"false")
            + wire.message(b"Q", b"SELECT 'a\\'' ; DROP TABLE t; --'\0")
        )
        first = read_until_ready(sock)
        assert [e["C"] for e in errors(first)] == ["42501"]
        assert "statements.dcl" in errors(first)[0]["M"]
        read_until_ready(sock)  # the query's answer, whatever it is
        query(sock, "SELECT count(*) FROM t")
        rows = [body for kind, body in read_until_ready(sock) if kind == b"D"]
        assert rows and rows[0].endswith(b"3")  # the table is still there, with its rows
        refused = [r for r in gateway.records(session) if r.kind == "function"]
        assert [(r.status, r.rule) for r in refused] == [("refused", "statements.dcl")]
        with gateway.postgres.connect() as admin:
            assert admin.execute(f"SELECT to_regclass('{session.upstream_user}.t')").fetchone() != (
                None,
            )


def test_texts_the_parser_cannot_take_are_refused_and_the_connection_lives_on(
    gateway: RunningGateway,
) -> None:
    session = guarded(gateway, READ_WRITE, role="readwrite")
    with psycopg.connect(gateway.dsn(session), autocommit=True) as conn:
        for text in (
            "SELECT " + "1+" * 600 + "1",  # too deep for the parse tree's JSON
            "SELECT " + "1, " * 30_000 + "1",  # too long to parse on the event loop
        ):
            with pytest.raises(psycopg.Error) as refused:
                conn.execute(text)
            assert "statements.unparsed" in str(refused.value)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    statuses = [r.status for r in gateway.records(session)]
    assert statuses.count("refused") == 2


def executed_sql(gw: RunningGateway, session: Session) -> list[str]:
    return [r.sql for r in gw.records(session) if r.kind == "execute"]


def test_a_duplicate_or_failed_parse_does_not_rename_what_runs(gateway: RunningGateway) -> None:
    session = gateway.new_session()
    with raw_login(gateway, session) as sock:
        sock.sendall(parse(b"s", "SELECT 'first'") + SYNC)
        assert errors(read_until_ready(sock)) == []
        sock.sendall(parse(b"s", "SELECT 'second'") + SYNC)  # 42P05: s exists
        assert [e["C"] for e in errors(read_until_ready(sock))] == ["42P05"]
        sock.sendall(parse(b"u", "SELEC 'broken'") + SYNC)  # a syntax error: no u at all
        assert [e["C"] for e in errors(read_until_ready(sock))] == ["42601"]
        sock.sendall(parse(b"u", "SELECT 'fixed'") + SYNC)
        assert errors(read_until_ready(sock)) == []
        sock.sendall(bind_execute(b"s") + bind_execute(b"u"))
        ran = read_until_ready(sock) + read_until_ready(sock)
        assert [body[6:] for kind, body in ran if kind == b"D"] == [b"first", b"fixed"]
        assert executed_sql(gateway, session) == ["SELECT 'first'", "SELECT 'fixed'"]


def test_names_past_63_bytes_are_one_name_as_the_server_has_them(
    gateway: RunningGateway,
) -> None:
    session = gateway.new_session()
    with raw_login(gateway, session) as sock:
        sock.sendall(parse(b"A" * 63 + b"1", "SELECT 'long'") + SYNC)
        assert errors(read_until_ready(sock)) == []
        sock.sendall(bind_execute(b"A" * 63 + b"2"))  # the same statement to the server
        ran = read_until_ready(sock)
        assert [body[6:] for kind, body in ran if kind == b"D"] == [b"long"]
        assert executed_sql(gateway, session) == ["SELECT 'long'"]


def test_a_deallocate_in_a_comment_or_a_skipped_close_forgets_nothing(
    gateway: RunningGateway,
) -> None:
    session = gateway.new_session()
    with raw_login(gateway, session) as sock:
        sock.sendall(parse(b"x", "SELECT 'x'") + SYNC)
        read_until_ready(sock)
        query(sock, "PREPARE y AS SELECT 1; /* DEALLOCATE x */ DEALLOCATE y")
        assert errors(read_until_ready(sock)) == []
        # a Close the server skips: an error earlier in its batch
        sock.sendall(parse(b"z", "SELEC 1") + wire.message(b"C", b"Sx\0") + SYNC)
        assert [e["C"] for e in errors(read_until_ready(sock))] == ["42601"]
        sock.sendall(bind_execute(b"x"))
        ran = read_until_ready(sock)
        assert [body[6:] for kind, body in ran if kind == b"D"] == [b"x"]  # still there
        assert executed_sql(gateway, session) == ["SELECT 'x'"]


def test_a_database_whose_own_settings_defeat_the_parser_is_refused(
    gateway: RunningGateway,
) -> None:
    session = guarded(gateway, READ_WRITE, role="readwrite")
    with gateway.postgres.connect() as admin:
        admin.execute(f"ALTER ROLE {session.upstream_user} SET standard_conforming_strings = off")
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(gateway.dsn(session), connect_timeout=10)
    assert "standard_conforming_strings is off" in str(refused.value)
    assert "cannot parse safely" in str(refused.value)
    # an unchecked role is not concerned: its statements are not parsed at all
    free = gateway.new_session()
    with gateway.postgres.connect() as admin:
        admin.execute(f"ALTER ROLE {free.upstream_user} SET standard_conforming_strings = off")
    with psycopg.connect(gateway.dsn(free), connect_timeout=10) as conn:
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("off",)


def test_a_client_that_never_reads_its_refusals_is_no_longer_read(
    gateway: RunningGateway,
) -> None:
    session = guarded(gateway, Policy(allowed=frozenset({C.READ})))
    with raw_login(gateway, session) as sock:
        sock.settimeout(5)
        refused = wire.message(b"Q", b"DELETE FROM t\0")  # answered by the gateway itself
        batch = refused * 1000

        def send() -> None:
            with contextlib.suppress(OSError):  # blocked once the gateway stops reading
                for _ in range(1000):  # 19 MB, each 19 bytes ~150 bytes of answer
                    sock.sendall(batch)

        sender = threading.Thread(target=send)
        sender.start()
        sender.join(30)
        assert not sender.is_alive()

        def buffered() -> int:
            return sum(
                side.transport.get_write_buffer_size()
                for side in list(gateway.gateway.open_sides)
                if isinstance(side, _ClientSide)
                and side.transport is not None
                and side.conn.session is not None
                and side.conn.session.lease_id == session.session.lease_id
            )

        async def held() -> int:
            return buffered()

        # what waits for this client at the gateway: its write buffer's high mark plus the
        # answers to one chunk read before the pause, never all the client sent
        assert gateway.call(held()) < 8 * 1024 * 1024
