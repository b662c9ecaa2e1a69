"""The scanner's rows and bytes limits: where the first DataRow over a limit starts."""

from __future__ import annotations

import pytest

from dbaccess.gateway.postgres import wire

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


@pytest.mark.parametrize("chunk", [len(STREAM), 64, 12, 5])
def test_row_limit_cuts_at_the_first_row_over_it(chunk: int) -> None:
    seen = Limits()
    scanner = wire.ServerScanner(seen)
    scanner.row_limit = 4
    feed(scanner, seen, chunk)
    # the fifth row, or (its header split across chunks) the first row starting in a chunk
    (cut,) = seen.cuts
    assert cut[1] is True
    assert cut[0] >= len(HEAD) + 4 * len(ROW) and (cut[0] - len(HEAD)) % len(ROW) == 0
    if chunk >= 12:
        assert cut[0] == len(HEAD) + 4 * len(ROW)
    assert scanner.row_limit == wire.NO_LIMIT  # off until the connection sets it again


def test_byte_limit_counts_every_byte_since_the_start() -> None:
    seen = Limits()
    scanner = wire.ServerScanner(seen)
    scanner.byte_limit = len(HEAD) + 3 * len(ROW)
    feed(scanner, seen, len(STREAM))
    assert seen.cuts == [(len(HEAD) + 3 * len(ROW), False)]
    assert scanner.total == len(STREAM)
