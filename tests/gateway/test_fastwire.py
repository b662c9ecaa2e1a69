"""The compiled reader of the gateway's frequent chunks (_fastwire.c) against the Python
path it stands in for: the same generated traffic, split anywhere, through a connection
with it and one without must forward the same bytes and make the same records. And each
function alone against the Python reading it mirrors, on valid and hostile bytes."""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import types
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbaccess.gateway.postgres import fastwire, server, wire
from dbaccess.gateway.postgres.server import Connection, GatewayConfig
from dbaccess.gateway.records import BatchingWriter, MemorySink, StatementRecord
from dbaccess.gateway.sessions import GatewaySession, ScramVerifier, Upstream


def test_the_compiled_reader_is_built_where_the_suite_runs_in_ci() -> None:
    # a C compiler and Python's headers are part of the CI machine: a failed build there is
    # a failure (elsewhere the gateway runs the Python path, and says nothing)
    if os.environ.get("CI"):
        assert fastwire.BUILT, "dbaccess/gateway/postgres/_fastwire.c was not built"
    if not fastwire.BUILT:
        pytest.skip("the compiled reader is not built here (no C compiler?)")


needs_c = pytest.mark.skipif(
    not fastwire.BUILT and not os.environ.get("CI"), reason="the compiled reader is not built"
)


def msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


# -- each function alone ----------------------------------------------------------------


def python_queries(data: bytes) -> list[str] | None:
    """What from_client's Python loop reads of a chunk of whole Query messages only."""
    texts: list[str] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 5 or data[pos] != ord("Q"):
            return None
        length = struct.unpack_from("!I", data, pos + 1)[0]
        if length < 5 or pos + 1 + length > len(data):
            return None
        texts.append(data[pos + 5 : pos + length].decode(errors="replace"))
        pos += 1 + length
    return texts or None


def python_answer(data: bytes) -> tuple[int | None, int, bytes] | None:
    """What the scanner and on_server_message read of the rest of a simple answer."""
    try:
        messages = list(wire.split_messages(data))
    except wire.ProtocolError:
        return None
    if not messages or messages[-1][2] != len(data):
        return None
    rows: int | None = None
    data_rows = 0
    for index, (kind, start, end) in enumerate(messages):
        body = data[start:end]
        if kind in (wire.DATA_ROW, wire.COPY_DATA):
            data_rows += 1
        elif kind == wire.COMMAND_COMPLETE:
            if body[:1] == b"D":
                return None
            counted = wire.command_rows(body)
            if counted is not None:
                if len(str(counted)) > 18:
                    return None
                rows = (rows or 0) + counted
        elif kind == wire.READY_FOR_QUERY:
            if index != len(messages) - 1 or len(body) != 1:
                return None
            return rows, data_rows, body
        elif kind in wire.SCANNED:
            return None
    return None


@needs_c
@pytest.mark.parametrize(
    "data",
    [
        msg(b"Q", b"SELECT 1;\0"),
        msg(b"Q", b"SELECT 1;\0") + msg(b"Q", "select 'é'\0".encode()),
        msg(b"Q", b"\xff\xfe bad utf-8\0"),  # replaced, as the Python path does
        msg(b"Q", b"\0"),  # an empty query
        msg(b"Q", b""),  # no NUL: the Python path's to refuse
        msg(b"Q", b"SELECT 1\0")[:-1],  # partial
        msg(b"Q", b"SELECT 1\0") + b"Q\0\0",  # a partial header after it
        msg(b"P", b"\0SELECT 1\0\0\0"),  # another kind
        msg(b"Q", b"SELECT 1\0") + msg(b"X", b""),
        b"Q\0\0\0\x03",  # a length under the header's
        b"Q\xff\xff\xff\xff" + b"x" * 20,  # a length past the chunk
        b"",
    ],
)
def test_client_queries_reads_what_the_python_path_reads(data: bytes) -> None:
    assert fastwire.client_queries is not None
    assert fastwire.client_queries(data) == python_queries(data)


T = msg(b"T", b"\0\x01aid\0" + b"\0" * 18)
D = msg(b"D", b"\0\x01\0\0\0\x011")
Z = msg(b"Z", b"I")


@needs_c
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (T + D + msg(b"C", b"SELECT 1\0") + Z, (1, 1, b"I")),
        (T + D * 3 + msg(b"C", b"SELECT 3\0") + msg(b"Z", b"T"), (3, 3, b"T")),
        (msg(b"C", b"BEGIN\0") + msg(b"Z", b"T"), (None, 0, b"T")),
        (msg(b"C", b"INSERT 0 5\0") + msg(b"C", b"UPDATE 2\0") + Z, (7, 0, b"I")),
        (msg(b"C", b"SELECT 1\0\0\0") + Z, (1, 0, b"I")),  # NULs stripped
        (msg(b"C", b"SELECT \0") + Z, (None, 0, b"I")),  # no digits
        (msg(b"C", b"SELECT x1\0") + Z, (None, 0, b"I")),
        (msg(b"C", b"SELECT " + b"9" * 18 + b"\0") + Z, (10**18 - 1, 0, b"I")),
        (msg(b"C", b"SELECT " + b"9" * 19 + b"\0") + Z, None),  # the Python path's
        (msg(b"C", b"") + Z, (None, 0, b"I")),  # an empty tag
        (msg(b"N", b"Mnotice\0\0") + msg(b"C", b"SELECT 0\0") + Z, (0, 0, b"I")),
        (msg(b"C", b"DELETE 3\0") + Z, None),  # D...: DEALLOCATE and DISCARD's path
        (msg(b"E", b"C42601\0\0") + Z, None),
        (msg(b"S", b"a\0b\0") + Z, None),
        (msg(b"I", b"") + Z, None),
        (msg(b"C", b"SELECT 1\0") + Z + Z, None),  # ReadyForQuery not last
        (msg(b"C", b"SELECT 1\0") + msg(b"Z", b""), None),
        (msg(b"C", b"SELECT 1\0") + msg(b"Z", b"II"), None),
        (msg(b"C", b"SELECT 1\0") + Z[:-1], None),  # partial
        (T + D + msg(b"C", b"SELECT 1\0"), None),  # no ReadyForQuery yet
        (b"D\0\0\0\x02" + Z, None),  # a bad length
        (b"", None),
    ],
)
def test_simple_answer_reads_what_the_python_path_reads(
    data: bytes, expected: tuple[int | None, int, bytes] | None
) -> None:
    assert fastwire.simple_answer is not None
    assert python_answer(data) == expected
    assert fastwire.simple_answer(data) == expected


KINDS = st.sampled_from(list(b"TDCZNSEIsGHW13dAKV"))
BODIES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [b"I", b"T", b"E", b"SELECT 1\0", b"INSERT 0 12\0", b"COPY 99999999999999999999\0"]
    ),
)


@needs_c
@settings(max_examples=3000, deadline=None)
@given(
    st.lists(st.tuples(KINDS, BODIES), max_size=8),
    st.integers(min_value=0, max_value=6),
    st.binary(max_size=6),
)
def test_both_readings_agree_on_generated_and_broken_bytes(
    messages: list[tuple[int, bytes]], cut: int, noise: bytes
) -> None:
    data = b"".join(msg(bytes([k]), b) for k, b in messages)
    for variant in (data, data[: max(0, len(data) - cut)], data + noise, noise + data):
        assert fastwire.simple_answer is not None and fastwire.client_queries is not None
        assert fastwire.simple_answer(variant) == python_answer(variant)
        assert fastwire.client_queries(variant) == python_queries(variant)


# -- a connection with it and one without ------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += bytes(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


def _connection() -> tuple[Connection, Any]:
    class Records:
        backlogged = False

        def __init__(self) -> None:
            self.added: deque[tuple[Any, ...]] = deque()

        def add_fields(self, fields: tuple[Any, ...]) -> None:
            self.added.append(fields)

    gateway = types.SimpleNamespace(records=Records(), config=GatewayConfig(), loop=None)
    conn = Connection(gateway, 1)  # type: ignore[arg-type]
    conn.session = GatewaySession(
        lease_id="l", person="p", target="t", role="readwrite", user="u",
        verifier=ScramVerifier.for_secret("x"), upstream=Upstream("h", 1, "d", "u", "p"),
    )  # fmt: skip
    conn.client.transport = _Transport()  # type: ignore[assignment]
    upstream = server._Side(conn)
    upstream.transport = _Transport()  # type: ignore[assignment]
    conn.upstream = upstream
    return conn, gateway.records


def _run(fast: bool, client_chunks: list[bytes], server_chunks: list[bytes]) -> tuple[Any, ...]:
    return _run_rounds(fast, [(client_chunks, server_chunks)])


def _run_rounds(fast: bool, rounds: list[tuple[list[bytes], list[bytes]]]) -> tuple[Any, ...]:
    """Each round's client chunks, then its server chunks, through one connection: what it
    forwarded each way, its records (without their clock readings), its statements still
    open, and its state."""
    saved = fastwire.client_queries, fastwire.simple_answer, fastwire.Relay, server._Open
    if not fast:
        fastwire.client_queries = fastwire.simple_answer = fastwire.Relay = None
        server._Open = server._PyOpen  # type: ignore[misc]
    try:
        conn, records = _connection()
        # the entries the transports call once relaying (the compiled Relay's, when fast)
        to_client, to_server = conn.relays()
        for client_chunks, server_chunks in rounds:
            for chunk in client_chunks:
                if not conn.closed:
                    to_client(chunk)
            for chunk in server_chunks:
                if not conn.closed:
                    to_server(chunk)
    finally:
        (
            fastwire.client_queries,
            fastwire.simple_answer,
            fastwire.Relay,
            server._Open,  # type: ignore[misc]
        ) = saved
    # the records without their clock readings (start and duration)
    kept = [fields[:8] + fields[10:] for fields in records.added]
    assert conn.upstream is not None
    return (
        bytes(conn.upstream.transport.sent),  # type: ignore[union-attr]
        bytes(conn.client.transport.sent),  # type: ignore[union-attr]
        kept,
        [
            (o.kind, o.sql, o.params, o.simple, o.rows, o.data_rows, o.bytes_out, o.bytes_in,
             o.sqlstate, o.rule)
            for o in conn.pending if o is not None
        ],
        conn.scanner.total,
        conn.status,
        conn.closed,
    )  # fmt: skip


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


QUERIES = st.lists(
    st.sampled_from(["SELECT 1", "select 'é'", "BEGIN", "", "DEALLOCATE x", "SELECT 1; SELECT 2"]),
    min_size=1,
    max_size=4,
)
ANSWER_PARTS = st.lists(
    st.sampled_from(
        [
            T, D, msg(b"C", b"SELECT 1\0"), msg(b"C", b"BEGIN\0"), msg(b"C", b"DEALLOCATE\0"),
            msg(b"C", b"INSERT 0 3\0"), msg(b"N", b"Mhello\0\0"), msg(b"S", b"a\0b\0"),
            msg(b"E", b"SERROR\0C42601\0\0"), msg(b"I", b""), Z, msg(b"Z", b"T"),
            msg(b"Z", b"E"), msg(b"C", b"SELECT " + b"9" * 20 + b"\0"),
        ]
    ),
    max_size=24,
)  # fmt: skip


@needs_c
@settings(max_examples=1500, deadline=None)
@given(
    QUERIES,
    ANSWER_PARTS,
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=5),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_a_connection_forwards_and_records_the_same_with_and_without_it(
    queries: list[str], answer: list[bytes], client_cuts: list[int], server_cuts: list[int]
) -> None:
    client = b"".join(msg(b"Q", q.encode() + b"\0") for q in queries)
    stream = b"".join(answer)
    client_chunks = _split(client, client_cuts)
    server_chunks = _split(stream, server_cuts) if stream else []
    assert _run(True, client_chunks, server_chunks) == _run(False, client_chunks, server_chunks)


@needs_c
@settings(max_examples=600, deadline=None)
@given(
    st.lists(
        st.tuples(
            QUERIES,
            ANSWER_PARTS,
            st.lists(st.integers(min_value=0, max_value=10_000), max_size=3),
            st.lists(st.integers(min_value=0, max_value=10_000), max_size=4),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_statement_after_statement_the_compiled_relay_does_what_the_python_path_does(
    rounds: list[tuple[list[str], list[bytes], list[int], list[int]]],
) -> None:
    # as a client talks: a statement, its answer, the next one (the relay's first paths
    # taken, left and taken again, with what an answer leaves open carried over)
    chunks = []
    for queries, answer, client_cuts, server_cuts in rounds:
        client = b"".join(msg(b"Q", q.encode() + b"\0") for q in queries)
        stream = b"".join(answer)
        chunks.append((_split(client, client_cuts), _split(stream, server_cuts) if stream else []))
    assert _run_rounds(True, chunks) == _run_rounds(False, chunks)


@needs_c
def test_the_compiled_relay_is_what_a_relaying_connection_uses() -> None:
    conn, _ = _connection()
    to_client, to_server = conn.relays()
    assert isinstance(to_client.__self__, fastwire.Relay)
    assert to_server.__self__ is to_client.__self__
    assert server._Open is fastwire.Open


QUERY = msg(b"Q", b"SELECT 1\0")
ANSWER = T + D + msg(b"C", b"SELECT 1\0") + Z


def _handing_to_python(path: str) -> tuple[Connection, Any, list[bytes], Any, Any]:
    """A relaying connection whose Python path for one direction (``from_client`` or
    ``from_server``) only collects what it is handed, and its two relays."""
    conn, records = _connection()
    handed: list[bytes] = []
    setattr(conn, path, handed.append)
    to_client, to_server = conn.relays()
    return conn, records, handed, to_client, to_server


def _held(conn: Connection) -> None:
    conn.client.buf += b"Q"


def _backlogged(conn: Connection) -> None:
    conn.records.backlogged = True  # type: ignore[misc]


@needs_c
@pytest.mark.parametrize(
    "state",
    [
        lambda c: setattr(c, "guarding", True),
        lambda c: setattr(c, "skipping", True),
        lambda c: setattr(c, "idle_timer", object()),
        _held,
        _backlogged,
        # a flag the relay reads from its C struct that is not False itself, or not set:
        # the Python path judges it (and raises, for one never set)
        lambda c: setattr(c, "guarding", 1),
        lambda c: setattr(c.records, "backlogged", 0),
        lambda c: delattr(c, "skipping"),
        lambda c: delattr(c.client, "buf"),
        lambda c: setattr(c.client, "buf", b""),
    ],
    ids=[
        "guarding", "skipping", "idle-timer", "bytes-held", "backlogged", "guarding-int",
        "backlogged-int", "skipping-unset", "buf-unset", "buf-not-bytearray",
    ],
)  # fmt: skip
def test_a_client_chunk_in_a_state_the_relay_does_not_take_goes_to_the_python_path(
    state: Any,
) -> None:
    conn, records, handed, to_client, _ = _handing_to_python("from_client")
    state(conn)
    to_client(QUERY)
    assert handed == [QUERY]
    assert not conn.pending
    assert conn.upstream is not None and conn.upstream.transport.sent == b""  # type: ignore[union-attr]


def _not_simple(conn: Connection) -> None:
    conn.pending.appendleft(server._Open("execute", "SELECT 1", None, False, 0))


@needs_c
@pytest.mark.parametrize(
    "state",
    [
        lambda c: setattr(c, "limiting", True),
        lambda c: setattr(c, "idle_timer", object()),
        lambda c: c.portals.update({b"p": ("SELECT 1", None)}),
        lambda c: c.pending.clear(),
        _not_simple,
        lambda c: c.scanner._header.extend(b"D\0"),
        lambda c: setattr(c.scanner, "_skip", 3),
        lambda c: setattr(c.scanner, "limited", True),
        lambda c: setattr(c, "limiting", 0),
        lambda c: delattr(c, "portals"),
        lambda c: setattr(c.scanner, "_bytes", 2**64),
        lambda c: setattr(c.scanner, "_base", None),
        lambda c: delattr(c.scanner, "_rows"),
    ],
    ids=[
        "limiting", "idle-timer", "portals", "nothing-pending", "head-not-simple",
        "split-header", "split-body", "limited", "limiting-int", "portals-unset",
        "count-too-big", "base-not-int", "rows-unset",
    ],
)  # fmt: skip
def test_a_server_chunk_in_a_state_the_relay_does_not_take_goes_to_the_python_path(
    state: Any,
) -> None:
    conn, records, handed, to_client, to_server = _handing_to_python("from_server")
    to_client(QUERY)
    state(conn)
    to_server(ANSWER)
    assert handed == [ANSWER]
    assert not records.added
    assert conn.client.transport.sent == b""  # type: ignore[union-attr]


@needs_c
def test_a_server_chunk_the_relay_cannot_read_is_scanned_by_the_python_path() -> None:
    conn, records = _connection()
    scanned: list[bytes] = []
    conn._scan_server = scanned.append  # type: ignore[method-assign]
    to_client, to_server = conn.relays()
    to_client(QUERY)
    to_server(ANSWER[:-1])  # not ending with a whole ReadyForQuery
    assert scanned == [ANSWER[:-1]]
    assert not records.added


@needs_c
def test_the_relay_records_a_simple_answer_as_the_python_path_does() -> None:
    conn, records = _connection()
    to_client, to_server = conn.relays()
    to_client(QUERY)
    to_server(ANSWER)
    (fields,) = records.added
    assert fields[:8] == ("l", "p", "t", "readwrite", "query", "SELECT 1", "none", None)
    assert fields[10:] == (1, len(ANSWER), 0, None, "completed", 1, None)
    assert conn.upstream is not None and conn.upstream.transport.sent == QUERY  # type: ignore[union-attr]
    assert conn.client.transport.sent == ANSWER  # type: ignore[union-attr]
    assert not conn.pending and conn.status == b"I"


@needs_c
def test_a_pending_statements_fields_cannot_be_deleted() -> None:
    # the relay reads them as always set: a deleted one would be a NULL in C
    item = server._Open("query", "SELECT 1", None, True, 0)
    for name in ("kind", "sql", "params", "rows", "sqlstate", "rule"):
        with pytest.raises(AttributeError):
            delattr(item, name)
        setattr(item, name, "x")
        assert getattr(item, name) == "x"


@needs_c
def test_a_record_of_small_counts_and_a_new_transport_are_handled_in_full() -> None:
    # rows 0 and no COPY bytes: small ints the interpreter shares, taken by place in the
    # record (a reference short would crash later); the write follows a transport swapped in
    conn, records = _connection()
    to_client, to_server = conn.relays()
    empty = msg(b"T", b"\0\0") + msg(b"C", b"SELECT 0\0") + Z
    for _ in range(3000):
        to_client(QUERY)
        to_server(empty)
    assert len(records.added) == 3000
    assert {fields[10:13] for fields in records.added} == {(0, len(empty), 0)}
    swapped = _Transport()
    conn.client.transport = swapped  # type: ignore[assignment]
    to_client(QUERY)
    to_server(empty)
    assert swapped.sent == empty


@needs_c
def test_a_connection_the_relay_holds_is_collected_with_its_cycle() -> None:
    # Connection, its scanner and sides are C-based (their members traversed for the
    # collector): a finished connection, relay and all, must not leak
    conn, _ = _connection()
    to_client, to_server = conn.relays()
    conn.client.relay = conn.client.data_received = to_client  # as start_relay sets them
    to_client(QUERY)
    # cycles through each C struct's members alone, which only its traverse can show
    conn.idle_timer = conn  # type: ignore[assignment]
    conn.scanner.end = conn  # type: ignore[assignment]
    conn.client.transport.owner = conn  # type: ignore[union-attr]
    gone = weakref.ref(conn)
    del conn, to_client, to_server
    gc.collect()
    assert gone() is None


class _Held(MemorySink):
    """A sink that fails while ``held`` is set."""

    held = True

    def write(self, records: Sequence[StatementRecord]) -> None:
        if self.held:
            raise OSError("not now")
        super().write(records)


@needs_c
def test_the_relay_adds_to_a_batching_writer_as_its_add_fields_does() -> None:
    # with the writer's own add_fields, the relay appends to its queue and calls overflow
    # past room itself: the records arrive in order, a backlog is marked at once, and a
    # closed writer refuses, as add_fields would
    sink = _Held()
    writer = BatchingWriter(sink, max_batch=3, max_delay=60, retry_delay=0.01, max_unwritten=4)
    try:
        conn, _ = _connection()
        conn.records, conn.add_record = writer, writer.add_fields
        to_client, to_server = conn.relays()
        called: list[str] = []
        sys.setprofile(lambda frame, event, _: called.append(frame.f_code.co_name))
        try:
            to_client(msg(b"Q", b"SELECT 0\0"))
            to_server(ANSWER)
        finally:
            sys.setprofile(None)
        assert "add_fields" not in called and "overflow" not in called  # no Python call
        for n in range(1, 4):
            to_client(msg(b"Q", f"SELECT {n}\0".encode()))
            to_server(ANSWER)
        assert not writer.backlogged  # 4 unwritten: at the limit, not over it
        to_client(QUERY)
        to_server(ANSWER)
        assert writer.backlogged  # the fifth: over it, marked with no Python add_fields
        sink.held = False
        assert writer.flush(5)
        assert [r.sql for r in sink.records] == [*(f"SELECT {n}" for n in range(4)), "SELECT 1"]
    finally:
        writer.close()
    to_client(QUERY)
    with pytest.raises(RuntimeError, match="closed"):
        to_server(ANSWER)
    assert not writer.queue  # refused before it was queued


def test_without_the_compiled_module_the_plain_bases_carry_the_same_state() -> None:
    # DBACCESS_GATEWAY_PYTHON=1 (or no C compiler): Connection, ServerScanner and _Side get
    # the plain ConnState, ScanState and SideState, and a relaying connection forwards and
    # records a statement as with the C ones
    script = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import test_fastwire as t
from dbaccess.gateway.postgres import fastwire, server, wire
assert not fastwire.BUILT and fastwire.Relay is None
assert server.Connection.__mro__[1].__module__ == fastwire.__name__
assert wire.ServerScanner.__mro__[1] is fastwire.ScanState
conn, records = t._connection()
to_client, to_server = conn.relays()
to_client(t.QUERY)
to_server(t.ANSWER)
(fields,) = records.added
assert fields[5] == "SELECT 1" and fields[10:13] == (1, len(t.ANSWER), 0), fields
assert conn.client.transport.sent == t.ANSWER and not conn.pending and conn.status == b"I"
print("ok")
"""
    here = os.path.dirname(__file__)
    root = os.path.dirname(os.path.dirname(here))
    run = subprocess.run(
        [sys.executable, "-c", script, here, root],
        env={**os.environ, "DBACCESS_GATEWAY_PYTHON": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
