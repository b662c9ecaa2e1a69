"""The scanner's rows and bytes limits: where the first DataRow over a limit starts."""

from __future__ import annotations

import types

import pytest

from dbaccess.gateway.guardrails import Policy
from dbaccess.gateway.postgres import server, wire
from dbaccess.gateway.postgres.server import Connection, GatewayConfig
from dbaccess.gateway.sessions import GatewaySession, ScramVerifier, Upstream

ROW = wire.message(b"D", b"\0\x01\0\0\0\x01x")  # 12 bytes
HEAD = wire.message(b"T", b"\0\x01x\0" + b"\0" * 18)
STREAM = HEAD + ROW * 10 + wire.message(b"C", b"SELECT 10\0") + wire.message(b"Z", b"I")


class Limits:
    def __init__(self) -> None:
        self.cuts: list[tuple[int, bool]] = []  # (offset in the whole stream, rows?)
        self.offset = 0

    def on_server_message(self, kind: int, body: bytes, rows: int, nbytes: int) -> None:
        pass

    def on_limit(self, start: int, rows_exceeded: bool) -> None:
        self.cuts.append((self.offset + start, rows_exceeded))


def feed(scanner: wire.ServerScanner, seen: Limits, chunk: int) -> None:
    for i in range(0, len(STREAM), chunk):
        seen.offset = i
        scanner.feed(STREAM[i : i + chunk])


@pytest.mark.parametrize("chunk", [len(STREAM), 64, 12, 7, 5, 3, 1])
def test_row_limit_cuts_at_the_first_row_over_it(chunk: int) -> None:
    seen = Limits()
    scanner = wire.ServerScanner(seen)
    scanner.row_limit = 4
    feed(scanner, seen, chunk)
    # the fifth row, wherever the chunks split it: a header split by a chunk's end is
    # reported at its true start (before the chunk), which a forwarder has held back
    assert seen.cuts == [(len(HEAD) + 4 * len(ROW), True)]
    assert scanner.row_limit == wire.NO_LIMIT  # off until the connection sets it again


def test_byte_limit_counts_every_byte_since_the_start() -> None:
    seen = Limits()
    scanner = wire.ServerScanner(seen)
    scanner.byte_limit = len(HEAD) + 3 * len(ROW)
    feed(scanner, seen, len(STREAM))
    assert seen.cuts == [(len(HEAD) + 3 * len(ROW), False)]
    assert scanner.total == len(STREAM)


class _Transport:
    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data

    def is_closing(self) -> bool:
        return False


def _limited_connection() -> tuple[Connection, _Transport]:
    from collections import deque

    class Records:
        backlogged = False

        def __init__(self) -> None:
            self.added: deque[object] = deque()

        def add_fields(self, fields: object) -> None:
            self.added.append(fields)

    async def no_cancel(conn: Connection) -> None:  # the real one: a fresh connection
        return None

    gateway = types.SimpleNamespace(
        records=Records(),
        config=GatewayConfig(),
        loop=None,
        forward_cancel=no_cancel,
        in_background=lambda work: work.close(),
    )
    conn = Connection(gateway, 1)  # type: ignore[arg-type]
    conn.session = GatewaySession(
        lease_id="l",
        person="p",
        target="t",
        role="readonly",
        user="u",
        verifier=ScramVerifier.for_secret("x"),
        upstream=Upstream("127.0.0.1", 1, "d", "u", "p"),
        policy=Policy(max_rows_per_result=4),
    )
    client = _Transport()
    conn.client.transport = client  # type: ignore[assignment]
    conn._start_guardrails(conn.session.policy)
    conn.pending.append(server._Open("query", "SELECT x", None, True, 0))
    return conn, client


@pytest.mark.parametrize("chunk", [len(STREAM), 64, 12, 7, 5, 3, 1])
def test_the_client_never_gets_part_of_a_row_over_the_limit(chunk: int) -> None:
    conn, client = _limited_connection()
    for i in range(0, len(STREAM), chunk):
        conn.from_server(STREAM[i : i + chunk])
    sent = bytes(client.sent)
    kept = HEAD + ROW * 4
    assert sent.startswith(kept)
    rest = list(wire.split_messages(sent[len(kept) :]))
    # then whole messages only: the limit's error and the ReadyForQuery
    assert [chr(kind) for kind, _, _ in rest] == ["E", "Z"]
    assert b"rows_per_result" in sent[len(kept) :]
