"""PostgreSQL protocol 3 framing: the few messages the gateway builds, reading the ones it
inspects, and the server-to-client header scanner.

The scanner never builds an object per DataRow: server bytes are forwarded in bulk and
only message headers are read, plus the bodies of the handful of messages that end a
statement (CommandComplete, ErrorResponse, ReadyForQuery ...), which are short.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Protocol

from dbaccess.gateway.postgres import fastwire

# The first message of a connection has no type byte: length, then one of these codes.
PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP_LENGTH = 10_000  # PostgreSQL's own limit for a startup packet

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_UINT16 = struct.Struct("!H")
_HEADER = struct.Struct("!cI")

# Server message types (bytes values), the ones the scanner looks at.
COMMAND_COMPLETE = ord("C")
ERROR_RESPONSE = ord("E")
READY_FOR_QUERY = ord("Z")
EMPTY_QUERY = ord("I")
PORTAL_SUSPENDED = ord("s")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
COPY_BOTH_RESPONSE = ord("W")
DATA_ROW = ord("D")
COPY_DATA = ord("d")
PARAMETER_STATUS = ord("S")
PARSE_COMPLETE = ord("1")
CLOSE_COMPLETE = ord("3")
NO_LIMIT = 1 << 62

# The server messages whose body the scanner hands over (all short).
SCANNED = frozenset(
    {
        COMMAND_COMPLETE,
        ERROR_RESPONSE,
        READY_FOR_QUERY,
        EMPTY_QUERY,
        PORTAL_SUSPENDED,
        COPY_IN_RESPONSE,
        COPY_OUT_RESPONSE,
        COPY_BOTH_RESPONSE,
        PARAMETER_STATUS,  # rare: a SET of a reported setting
        PARSE_COMPLETE,  # the extended protocol's: a prepared statement's name is taken
        CLOSE_COMPLETE,
    }
)
# ErrorResponse bodies are kept up to this size; the SQLSTATE field comes first anyway.
MAX_SCANNED_BODY = 64 * 1024


# PostgreSQL's own limits on a client message's length (postgres.c, SocketBackend): 1 GiB
# for those that carry SQL or data, 10,000 bytes for the others. A message declaring more is
# refused there as it comes; so here, before the gateway buffers it whole.
LARGE_MESSAGE_LIMIT = 0x3FFFFFFF - 1
SMALL_MESSAGE_LIMIT = 10_000
_LARGE_KINDS = frozenset(b"QFPBd")


def over_client_limit(kind: int, length: int) -> bool:
    """A client message of type ``kind`` declaring ``length`` (its length field) is over
    what the server would take."""
    return length - 4 > (LARGE_MESSAGE_LIMIT if kind in _LARGE_KINDS else SMALL_MESSAGE_LIMIT)


class ProtocolError(Exception):
    """Bytes that are not PostgreSQL protocol 3 (the connection is closed)."""


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + _UINT32.pack(len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def error_response(code: str, text: str, severity: str = "FATAL") -> bytes:
    fields = b"S" + cstring(severity) + b"V" + cstring(severity)
    fields += b"C" + cstring(code) + b"M" + cstring(text)
    return message(b"E", fields + b"\0")


def authentication(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _INT32.pack(code) + data)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", _INT32.pack(pid) + _INT32.pack(secret))


def startup_message(params: dict[str, str]) -> bytes:
    body = _INT32.pack(PROTOCOL_3_0)
    for name, value in params.items():
        body += cstring(name) + cstring(value)
    body += b"\0"
    return _UINT32.pack(len(body) + 4) + body


def cancel_request(pid: int, secret: int) -> bytes:
    return _UINT32.pack(16) + _INT32.pack(CANCEL_REQUEST) + _INT32.pack(pid) + _INT32.pack(secret)


def negotiate_protocol_version(minor: int, unknown: list[str]) -> bytes:
    # the full version (3 << 16 | minor), as the server sends it and libpq reads it
    body = _INT32.pack(PROTOCOL_3_0 | minor) + _INT32.pack(len(unknown))
    return message(b"v", body + b"".join(cstring(name) for name in unknown))


# -- reading ---------------------------------------------------------------------------


def int32(data: bytes | bytearray | memoryview, offset: int = 0) -> int:
    return int(_INT32.unpack_from(data, offset)[0])


def uint16(data: bytes | bytearray | memoryview, offset: int = 0) -> int:
    return int(_UINT16.unpack_from(data, offset)[0])


def read_cstring(data: bytes, offset: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``offset`` and the offset after its NUL."""
    end = data.find(b"\0", offset)
    if end < 0:
        raise ProtocolError("a string is not terminated")
    return data[offset:end], end + 1


def startup_length(buf: bytes | bytearray) -> int | None:
    """The whole length of the startup-phase packet at the start of ``buf`` (None: not yet)."""
    if len(buf) < 4:
        return None
    length = int(_UINT32.unpack_from(buf, 0)[0])
    if length < 8 or length > MAX_STARTUP_LENGTH:
        raise ProtocolError("invalid startup packet length")
    return length


def startup_params(body: bytes) -> dict[str, str]:
    """name/value pairs of a StartupMessage body (after the protocol version)."""
    params: dict[str, str] = {}
    offset = 0
    while offset < len(body) and body[offset] != 0:
        name, offset = read_cstring(body, offset)
        value, offset = read_cstring(body, offset)
        params[name.decode(errors="replace")] = value.decode(errors="replace")
    return params


def split_messages(buf: bytes | bytearray) -> Iterator[tuple[int, int, int]]:
    """(type, body start, end) of each complete typed message at the start of ``buf``."""
    pos = 0
    size = len(buf)
    while size - pos >= 5:
        length = int(_UINT32.unpack_from(buf, pos + 1)[0])
        if length < 4:
            raise ProtocolError("invalid message length")
        end = pos + 1 + length
        if end > size:
            return
        yield buf[pos], pos + 5, end
        pos = end


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body, by their one-letter code."""
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(body) and body[offset] != 0:
        code = chr(body[offset])
        value, offset = read_cstring(body, offset + 1)
        fields[code] = value.decode(errors="replace")
    return fields


def sqlstate(body: bytes) -> str | None:
    try:
        return error_fields(body).get("C")
    except ProtocolError:  # a truncated body (over MAX_SCANNED_BODY)
        start = body.find(b"\0C")
        return body[start + 2 : start + 7].decode(errors="replace") if start >= 0 else None


def command_rows(body: bytes) -> int | None:
    """Rows in a CommandComplete tag ("SELECT 5", "INSERT 0 3", "COPY 10"); None for "BEGIN"."""
    tag = body.rstrip(b"\0")
    last = tag.rpartition(b" ")[2]
    # at most 20 digits (a 64-bit count): a longer "number" is no server's, and int()
    # refuses one of over 4300 digits
    return int(last) if tag != last and last.isdigit() and len(last) <= 20 else None


class ScanHandler(Protocol):
    def on_server_message(self, kind: int, body: bytes, rows: int, nbytes: int) -> None:
        """One of the SCANNED messages; ``rows`` DataRows and ``nbytes`` bytes (this message
        included) went by since the previous call."""

    def on_limit(self, start: int, rows_exceeded: bool) -> None:
        """A DataRow or CopyData at ``start`` of the current chunk (negative: its header
        began that many bytes before the chunk) went over ``row_limit``
        (rows since the previous SCANNED message) or ``byte_limit`` (``total`` bytes); both
        limits are off until set again."""


class ServerScanner(fastwire.ScanState):
    """Follows message boundaries in the server's byte stream, chunk by chunk. ``_header``,
    ``_skip``, ``_rows``, ``_bytes``, ``_base``, ``limited`` and ``end`` are its base's
    (fastwire.ScanState: C struct members the relay reads)."""

    __slots__ = ("_handler", "_body", "_kind", "_row_limit", "_byte_limit")

    def __init__(self, handler: ScanHandler) -> None:
        self._handler = handler
        self._header = bytearray()  # a header split across chunks
        self._skip = 0  # body bytes of the current message still to come
        self._body: bytearray | None = None  # the body of a SCANNED message being gathered
        self._kind = 0
        self._rows = 0
        self._bytes = 0
        self._base = 0  # bytes scanned before the current ``_bytes``
        self._row_limit = NO_LIMIT
        self._byte_limit = NO_LIMIT
        self.limited = False  # either limit is set: every DataRow is checked
        self.end = 0  # offset in the chunk just after the message being handed over

    @property
    def total(self) -> int:
        """Every byte scanned."""
        return self._base + self._bytes

    @property
    def row_limit(self) -> int:
        """DataRows (or COPY rows) of one answer above which a row is over the limit."""
        return self._row_limit

    @row_limit.setter
    def row_limit(self, value: int) -> None:
        self._row_limit = value
        self.limited = value != NO_LIMIT or self._byte_limit < NO_LIMIT

    @property
    def byte_limit(self) -> int:
        """The ``total`` above which a DataRow or CopyData is over the limit."""
        return self._byte_limit

    @byte_limit.setter
    def byte_limit(self, value: int) -> None:
        self._byte_limit = value
        self.limited = value < NO_LIMIT or self._row_limit != NO_LIMIT

    def feed(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        unpack = _UINT32.unpack_from
        while pos < size:
            if not self._skip and not self._header and not self.limited:
                # the hot path, while no limit applies: whole messages in this chunk, in a
                # loop of locals; bytes are counted as the distance covered (from before
                # this chunk: ``start`` counts the bytes carried over), handed over with
                # each SCANNED one
                rows = self._rows
                start = pos - self._bytes
                handle = self._handler.on_server_message
                while pos + 5 <= size:
                    kind = data[pos]
                    end = pos + 1 + unpack(data, pos + 1)[0]
                    if end > size or end < pos + 5:
                        break  # a partial message (or a bad length): the general path
                    if kind == DATA_ROW or kind == COPY_DATA:
                        rows += 1
                    elif kind in SCANNED:
                        # _emit, inlined: this runs once or twice per statement
                        nbytes = end - start
                        self._base += nbytes
                        self._rows = self._bytes = 0  # what the handler may read (total)
                        self.end = end
                        handle(kind, data[pos + 5 : end], rows, nbytes)
                        rows, start = 0, end
                        if self.limited:
                            pos = end
                            break  # a limit set by the handler: counted from here on
                    pos = end
                self._rows = rows
                self._bytes = pos - start
                if pos >= size:
                    return
            if self._skip:
                take = min(self._skip, size - pos)
                if self._body is not None:
                    if len(self._body) < MAX_SCANNED_BODY:
                        self._body += data[pos : pos + take]
                    self._skip -= take
                    pos += take
                    if not self._skip:
                        body, self._body = bytes(self._body), None
                        self.end = pos
                        self._emit(self._kind, body)
                else:
                    self._skip -= take
                    pos += take
                continue
            if self._header or size - pos < 5:
                carried = len(self._header)
                need = 5 - carried
                self._header += data[pos : pos + need]
                pos += min(need, size - pos)
                if len(self._header) < 5:
                    return
                kind = self._header[0]
                length = int(_UINT32.unpack_from(self._header, 1)[0])
                self._header.clear()
                # began ``carried`` bytes before this chunk: a header split by the previous
                # chunk's end, which a forwarder with limits held back (``partial_header``)
                start = -carried
            else:
                start = pos
                kind = data[pos]
                length = int(_UINT32.unpack_from(data, pos + 1)[0])
                pos += 5
            if length < 4:
                raise ProtocolError("invalid message length from the server")
            body_length = length - 4
            self._bytes += length + 1
            if kind == DATA_ROW or kind == COPY_DATA:
                self._rows += 1
                over_rows = self._rows > self._row_limit
                if over_rows or self._base + self._bytes > self._byte_limit:
                    rows_exceeded = over_rows
                    self.row_limit = self.byte_limit = NO_LIMIT
                    self._handler.on_limit(start, rows_exceeded)
            elif kind in SCANNED:
                if size - pos >= body_length:
                    self.end = pos + body_length
                    self._emit(kind, data[pos : pos + body_length])
                    pos += body_length
                else:
                    self._kind = kind
                    self._body = bytearray(data[pos:])
                    self._skip = body_length - (size - pos)
                    return
                continue
            # any other message: skip its body, here or in the next chunks
            if size - pos >= body_length:
                pos += body_length
            else:
                self._skip = body_length - (size - pos)
                return

    @property
    def partial_header(self) -> int:
        """Bytes of a message header at the end of what was fed, not complete yet."""
        return len(self._header)

    def whole_answer(self, data: bytes) -> tuple[int | None, int, int, bytes] | None:
        """``data`` as the rest of a simple query's answer, read at once, when the compiled
        reader is built and recognises it (fastwire.simple_answer) and no message is split
        or limited here: (the rows its CommandCompletes count, or None; its DataRows and
        bytes, with those carried from earlier chunks; ReadyForQuery's status). None: feed
        it, as any other chunk."""
        read = fastwire.simple_answer
        if read is None or self._skip or self._header or self.limited:
            return None
        answer = read(data)
        if answer is None:
            return None
        counted, rows, status = answer
        nbytes = self._bytes + len(data)
        rows += self._rows
        self._base += nbytes
        self._rows = self._bytes = 0
        self.end = len(data)
        return counted, rows, nbytes, status

    def take(self) -> tuple[int, int]:
        """The DataRows and bytes counted since the last message handed over (for a statement
        the connection ends in the middle of)."""
        rows, nbytes = self._rows, self._bytes
        self._rows = self._bytes = 0
        return rows, nbytes

    def _emit(self, kind: int, body: bytes) -> None:
        rows, nbytes = self._rows, self._bytes
        self._rows = self._bytes = 0
        self._base += nbytes
        self._handler.on_server_message(kind, body, rows, nbytes)
