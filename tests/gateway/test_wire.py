"""The server-to-client header scanner, chunk by chunk, on bytes PostgreSQL would send."""

from __future__ import annotations

import pytest

from dbaccess.gateway.postgres import wire


def msg(kind: bytes, body: bytes) -> bytes:
    return wire.message(kind, body)


RESULT = (
    msg(b"T", b"\0\x01id\0" + b"\0" * 18)
    + b"".join(msg(b"D", b"\0\x01\0\0\0\x01" + str(i).encode()) for i in range(3))
    + msg(b"C", b"SELECT 3\0")
    + msg(b"E", b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0")
    + msg(b"Z", b"I")
)


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes, int, int]] = []

    def on_server_message(self, kind: int, body: bytes, rows: int, nbytes: int) -> None:
        self.events.append((chr(kind), body, rows, nbytes))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, len(RESULT)])
def test_scanner_sees_the_same_at_any_chunk_size(chunk: int) -> None:
    seen = Seen()
    scanner = wire.ServerScanner(seen)
    for i in range(0, len(RESULT), chunk):
        scanner.feed(RESULT[i : i + chunk])
    assert [(k, b, r) for k, b, r, _ in seen.events] == [
        (
            "C",
            b"SELECT 3\0",
            3,
        ),
        ("E", b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0", 0),
        ("Z", b"I", 0),
    ]
    assert sum(n for *_, n in seen.events) == len(RESULT)


def test_headers_only_for_data_rows() -> None:
    seen = Seen()
    big = msg(b"D", b"x" * 100_000)
    wire.ServerScanner(seen).feed(big * 3 + msg(b"C", b"SELECT 3\0"))
    assert seen.events == [("C", b"SELECT 3\0", 3, len(big) * 3 + 14)]


def test_bad_length_is_a_protocol_error() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.ServerScanner(Seen()).feed(b"D\0\0\0\x02")


def test_tags_and_sqlstate() -> None:
    assert wire.command_rows(b"INSERT 0 3\0") == 3
    assert wire.command_rows(b"COPY 1000\0") == 1000
    assert wire.command_rows(b"BEGIN\0") is None
    assert wire.command_rows(b"CREATE TABLE\0") is None
    assert wire.sqlstate(b"SFATAL\0VFATAL\0C57P01\0Mbye\0\0") == "57P01"


def test_split_messages_leaves_a_partial_one() -> None:
    data = msg(b"Q", b"SELECT 1\0") + msg(b"X", b"")[:3]
    assert list(wire.split_messages(data)) == [(ord("Q"), 5, 14)]


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        (b"SELECT 5\0", 5),
        (b"INSERT 0 3\0", 3),
        (b"BEGIN\0", None),
        (b"\0", None),
        (b"", None),
        (b"SELECT " + b"9" * 5000 + b"\0", None),  # int() refuses over 4300 digits
        (b"SELECT " + b"9" * 21 + b"\0", None),
    ],
)
def test_command_rows_of_any_tag_a_server_could_send(tag: bytes, rows: int | None) -> None:
    assert wire.command_rows(tag) == rows


@pytest.mark.parametrize(
    ("kind", "length", "over"),
    [
        (b"Q", 0x3FFFFFFF + 3, False),  # PostgreSQL's 1 GiB for SQL and data
        (b"Q", 0x3FFFFFFF + 4, True),
        (b"Q", 0xFFFFFFFF, True),
        (b"d", 0x3FFFFFFF + 4, True),
        (b"S", 10_004, False),  # 10,000 bytes for the others
        (b"S", 10_005, True),
        (b"E", 100_000, True),
    ],
)
def test_client_messages_are_held_to_the_servers_own_limits(
    kind: bytes, length: int, over: bool
) -> None:
    assert wire.over_client_limit(kind[0], length) is over
