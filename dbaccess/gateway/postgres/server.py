"""The PostgreSQL gateway: an asyncio Protocol server between clients and the database.

Per client connection: the startup (SSLRequest/GSSENCRequest/CancelRequest), SCRAM-SHA-256
against the session's verifier, a connection upstream as the session's ephemeral user, our
own BackendKeyData, then the relay. Client -> server bytes are framed and the statement
messages read (Query, Parse/Bind/Execute, FunctionCall, COPY data); server -> client bytes
are forwarded as they come and only their headers scanned (wire.ServerScanner) to finish
the open statement records. The handshakes are coroutines over the same Protocols (cold
path); the relay is plain callbacks (hot path).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any, Protocol, cast

import scramp

from dbaccess.gateway import guardrails
from dbaccess.gateway.cancel_peers import CancelPeers
from dbaccess.gateway.credentials import mock_salt
from dbaccess.gateway.guardrails import ALLOW_ALL, Policy
from dbaccess.gateway.postgres import fastwire, wire
from dbaccess.gateway.postgres.classify import (
    classify,
    deallocated_names,
    unsafe_encoding,
    unsafe_startup,
)
from dbaccess.gateway.postgres.scram_login import LoginRefused, ScramLogin
from dbaccess.gateway.records import Kind, ParamsPolicy, RecordFields, StatementRecord, Status
from dbaccess.gateway.sessions import (
    GatewaySession,
    LiveConnections,
    ScramVerifier,
    SessionDirectory,
    Upstream,
)
from dbaccess.gateway.upstream_socket import not_served_by
from dbaccess.gateway.upstream_tls import tls_failure

log = logging.getLogger(__name__)

SCRAM = scramp.ScramMechanism("SCRAM-SHA-256")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
MAX_PARAM_TEXT = 4096  # characters of one bind parameter kept under params = "full"
# Characters of prepared statements' SQL a connection may hold at the gateway (named ones
# live until closed; the records of their Executes need the text): over it, FATAL 53200.
MAX_PREPARED_TEXT = 64 * 1024 * 1024
# The names a DEALLOCATE statement drops (its tag says which ran; unquoted names fold to
# lower case, as the server folds them)
# The server keeps prepared statements' and portals' names in NAMEDATALEN (64) byte keys:
# names that differ only after their 63rd byte are one name to it, so to us.
MAX_NAME = 63
_NO_UNDO = "\0no undo"  # a portal's Close: nothing to put back


def _unsafe_setting(body: bytes, how: str) -> str | None:
    """What is wrong with the server's setting in a ParameterStatus ``body``, if it makes
    the server read text unlike the gateway's parser."""
    name, offset = wire.read_cstring(body, 0)
    value, _ = wire.read_cstring(body, offset)
    if (name == b"standard_conforming_strings" and value != b"on") or (
        name == b"client_encoding" and unsafe_encoding(value.decode(errors="replace"))
    ):
        rule = guardrails.class_rule(guardrails.StatementClass.PARSER_SETTINGS)
        return (
            f"{name.decode(errors='replace')} {how} {value.decode(errors='replace')}, which "
            f"the gateway cannot parse safely (rule {rule})"
        )
    return None


def _object_name(body: bytes, offset: int) -> tuple[bytes, int]:
    name, offset = wire.read_cstring(body, offset)
    return name[:MAX_NAME], offset


# Characters of a Bind's parameters kept in all (the shown values, "<n bytes>" under
# "redacted"): a Bind may carry 65535 of them; past this the rest is counted in a marker.
MAX_PARAMS_TEXT = 64 * 1024

Q, P, B, E, S, F, X, CLOSE, H = (ord(c) for c in "QPBESFXCH")
COPY_DATA, COPY_DONE, COPY_FAIL = (ord(c) for c in "dcf")
INSPECTED = frozenset({Q, P, B, E, S, F, X, CLOSE, H, COPY_DATA, COPY_DONE, COPY_FAIL})
_C = guardrails.StatementClass
# A FunctionCall names its function by oid only: what it does is not known, so it counts as
# everything a function can do (set_config: DCL and the parser's settings; lo_export and
# pg_read_file: the server's files)
FUNCTION_CALL_CLASSES = frozenset({_C.WRITE, _C.DDL, _C.DCL, _C.UNTRUSTED, _C.PARSER_SETTINGS})
# Before the relay (start-up, SCRAM, the database's login) a peer sends a few small
# messages; one declaring more, or a peer sending more in all, floods rather than logs
# in, and is cut off instead of being buffered until the handshake timeout.
MAX_HANDSHAKE_MESSAGE = 64 * 1024  # PostgreSQL's own limit for an authentication token
MAX_UNRELAYED = 1024 * 1024
TLS_HANDSHAKE = 0x16  # the first byte of a TLS record: a direct TLS ClientHello
ALPN = "postgresql"
# a text the server refuses at parse time: stands in for a refused statement that cannot be
# answered by the gateway itself because earlier pipelined messages are still unanswered
# (one identifier: the server's "syntax error at or near" names it, and so the rule)
REFUSED_TEXT = "refused_by_dbaccess_gateway_rule_{}"
SSL_REQUEST = _INT32.pack(8) + _INT32.pack(wire.SSL_REQUEST)
UNRECORDED = guardrails.Refusal(
    "records.unwritten",
    "dbaccess gateway: statement records cannot be written now (the store is unreachable or "
    "slow), so no statement runs; nothing was run, retry in a moment (rule records.unwritten)",
    "53000",  # insufficient_resources
)


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None  # None: SSLRequest is answered 'N'
    require_tls: bool = False
    # The address upstream connections leave from, when the database's pg_hba.conf (or a
    # firewall) admits the gateway by it; None: the system chooses.
    upstream_source: str | None = None
    params: ParamsPolicy = "none"
    high_water: int = 256 * 1024  # a side's write buffer above this pauses the other side
    low_water: int = 64 * 1024
    handshake_timeout: float = 30.0
    # SO_REUSEPORT: several gateway processes on one address share its connections (the
    # kernel spreads them; Linux admits only processes of the same user to the port).
    reuse_port: bool = False
    # With reuse_port and mock_salt_key: the processes on the address hand each other the
    # cancels that reached the wrong one (gateway/cancel_peers.py; Linux).
    cancel_peers: bool = False
    connect_timeout: float = 10.0
    # The gateway key (``[gateway] key_file``): the mock salt of a user name no session has
    # derives from it, so every process behind one address, before and after a restart,
    # shows the same salt, as the store does for a real user. None: a key of this process
    # (one gateway, e.g. in tests).
    mock_salt_key: str | None = None
    # Before they authenticate, anyone who reaches the port can open connections: the
    # connections still in their start-up are capped per process and per client address
    # (OpenSSH's MaxStartups), and all client connections, starting or established, per
    # process, so that a flood cannot take the file descriptors the store, the upstream
    # connections and the listener need. One over a cap gets FATAL 53300 at once.
    max_startups: int = 100
    max_startups_per_source: int = 20
    max_connections: int = 5000

    @property
    def source_address(self) -> tuple[str, int] | None:
        return None if self.upstream_source is None else (self.upstream_source, 0)


class RecordWriter(Protocol):
    backlogged: bool  # too many records unwritten: new statements are refused

    def room_for_refusal(self) -> bool: ...

    def add(self, record: StatementRecord) -> None: ...

    def add_fields(self, record: RecordFields) -> None: ...


class _Closed(Exception):
    """The connection ended (or was refused) during the handshake."""


class _OverLimit(Exception):
    """A client message over one of the connection's limits: FATAL ``code``, ``text``."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


_READY = wire.READY_FOR_QUERY
_COMPLETE = wire.COMMAND_COMPLETE

# A connection's place in the gateway's counts (Gateway.admit, established, forget): each
# moves forward only, so each count is raised and lowered exactly once per connection.
_UNCOUNTED, _STARTING, _ESTABLISHED, _GONE = range(4)
TOO_MANY = "53300"  # too_many_connections
REFUSAL_LOG_INTERVAL = 10.0  # seconds between warnings about refused connections

# How long Gateway.close waits for its connections' sockets to close cleanly.
CLOSE_GRACE = 1.0


class _Side(fastwire.SideState, asyncio.Protocol):
    """One socket. Until ``relay`` is set, bytes wait in ``buf`` for the handshake coroutine;
    after it, each chunk goes straight to ``relay``. ``transport`` and ``buf`` are its base's
    (fastwire.SideState: C struct members the relay reads)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.relay: Callable[[bytes], None] | None = None
        self.peer: _Side | None = None  # the side that stops reading while we cannot write
        self.lost = False
        self.holds = 0  # reasons reading is paused (the peer's or our own full buffer)
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.set_transport(cast(asyncio.Transport, transport))

    def set_transport(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        gateway = self.conn.gateway
        gateway.open_sides.add(self)
        transport.set_write_buffer_limits(gateway.config.high_water, gateway.config.low_water)

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay(data)
        else:
            self.buf += data
            if len(self.buf) > MAX_UNRELAYED and self.transport is not None:
                log.warning(
                    "gateway connection %d: over %d bytes before the relay, cut off",
                    self.conn.number,
                    MAX_UNRELAYED,
                )
                self.buf.clear()
                self.transport.abort()
            self._wake()

    def start_relay(self, relay: Callable[[bytes], None]) -> None:
        """From now on each chunk goes to ``relay``, called by the transport itself: the
        method is shadowed on the instance and the protocol set again, because uvloop
        keeps the bound ``data_received`` it found (one Python call less per chunk)."""
        self.relay = relay
        self.data_received = relay  # type: ignore[method-assign, assignment]
        if self.transport is not None and not self.transport.is_closing():
            self.transport.set_protocol(self)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.gateway.open_sides.discard(self)
        self._wake()
        self.conn.side_lost(self)

    def abort_unless_lost(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        # what we cannot write, we stop reading from its source: the peer's bytes, and
        # (the client's side) the client itself, whose messages the gateway may answer on
        # its own (a refused statement's error): a client that never reads must not make
        # the gateway buffer those without bound
        if self.peer is not None:
            self.peer.hold()
        if self.answers_itself:
            self.hold()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release()
        if self.answers_itself:
            self.release()

    answers_itself = False

    def hold(self) -> None:
        """One more reason not to read (each ``hold`` is matched by a ``release``)."""
        self.holds += 1
        if self.holds == 1 and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0 and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self) -> None:
        if self.lost:
            raise _Closed
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.lost and not self.buf:
            raise _Closed

    async def read_exact(self, count: int) -> bytes:
        while len(self.buf) < count:
            await self._more()
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data

    async def read_startup(self) -> bytes:
        while True:
            length = wire.startup_length(self.buf)
            if length is not None and len(self.buf) >= length:
                return await self.read_exact(length)
            await self._more()

    async def read_message(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 5 and int.from_bytes(self.buf[1:5]) > MAX_HANDSHAKE_MESSAGE:
                raise wire.ProtocolError("a start-up message is too long")
            for kind, start, end in wire.split_messages(self.buf):
                body = bytes(self.buf[start:end])
                del self.buf[:end]
                return kind, body
            await self._more()


class _ClientSide(_Side):
    answers_itself = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.start()


@dataclass(slots=True)
class _Open:
    """A statement the client sent whose answer is not complete yet."""

    kind: Kind
    sql: str
    params: tuple[str | None, ...] | None
    simple: bool  # Query or FunctionCall: ends at ReadyForQuery, not at CommandComplete
    t0: int  # time.monotonic_ns() at the client's message; the wall time is derived from it
    rows: int | None = None
    data_rows: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    sqlstate: str | None = None
    rule: str | None = None  # the guardrail that refused it


# the same fields as a C struct where the compiled reader is built: its Relay reads and
# updates them directly (the dataclass stays the reference the differential test holds
# it to, and what runs without the extension)
_PyOpen = _Open
if fastwire.Open is not None:
    _Open = fastwire.Open  # type: ignore[misc]


class Connection(fastwire.ConnState):
    """One client connection and its upstream connection. ``idle_timer``, ``guarding``,
    ``skipping``, ``limiting``, ``portals``, ``closed`` and ``status`` are its base's
    (fastwire.ConnState: C struct members the relay reads)."""

    def __init__(self, gateway: Gateway, number: int) -> None:
        self.gateway = gateway
        self.number = number
        self.client = _ClientSide(self)
        self.upstream: _Side | None = None
        self.session: GatewaySession | None = None
        self.upstream_key: tuple[int, int] | None = None
        self.key: tuple[int, int] | None = None
        self.pending: deque[_Open | None] = deque()  # None: a Sync
        self.statements: dict[bytes, str] = {}
        self.statement_text = 0  # characters in self.statements (MAX_PREPARED_TEXT)
        self.portals: dict[bytes, tuple[str, tuple[str | None, ...] | None]] = {}
        # (name, the text it had before) of each Parse and statement Close the server has
        # not confirmed yet (ParseComplete, CloseComplete), None at each Sync
        self.undo: deque[tuple[bytes, str | None] | None] = deque()
        self.scanner = wire.ServerScanner(self)
        self.copy_in = False
        self.terminating = False
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        # guardrails (the session's policy, set at login)
        self.policy: Policy = ALLOW_ALL
        self.guarding = False  # statement classes are checked (Q, P, F)
        self.limiting = False  # rows or bytes limits: the server's bytes are cut if over
        self.status = b"I"  # the server's transaction status at its last ReadyForQuery
        self.unsynced = False  # extended-protocol messages forwarded since the last Sync
        self.flushed = False  # a Flush since then: the client waits for the answers
        self.skipping = False  # a refused Parse: drop client messages up to the Sync
        self.discard_rule: str | None = None  # over a limit: server bytes dropped until Z
        self.events: list[tuple[int, bytes | None]] = []  # cut (None) / resume, in a chunk
        self.held_header = b""  # with limits: a header split by a chunk's end, not yet sent
        self.bytes_counted = 0  # of scanner.total, already added to the session's count
        self.last_active = 0.0  # loop time of the last client message or ReadyForQuery
        self.idle_timer: asyncio.TimerHandle | None = None
        # per connection, not per statement: a statement's wall start is its monotonic
        # start plus this offset (one clock read, and no datetime, on the hot path)
        self.wall_offset = time.time_ns() - time.monotonic_ns()
        self.records = gateway.records
        self.add_record = gateway.records.add_fields
        self.params_policy = gateway.config.params
        self.phase = _UNCOUNTED
        self.source = ""  # the client's IP address, for max_startups_per_source

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        assert self.client.transport is not None
        peer = self.client.transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self.gateway.admit(self)
        if refusal is not None:  # before any read: no store lookup, no upstream connection
            self._refuse(TOO_MANY, refusal)  # clear text: a TLS handshake costs too much
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.wait_for(self._handshake(), self.gateway.config.handshake_timeout)
        except _Closed:
            self.close()
        except TimeoutError:
            self._refuse("08006", "the connection did not finish its start-up in time")
        except (wire.ProtocolError, UnicodeDecodeError):
            self._refuse("08P01", "invalid start-up of the PostgreSQL protocol")
        except OSError as exc:
            self._refuse("08006", f"the gateway cannot reach the database ({exc.strerror})")
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception as exc:  # never a secret in our own messages; name the type only
            log.error("gateway connection %d failed: %s", self.number, type(exc).__name__)
            self._refuse("XX000", "the gateway failed to set up the connection")

    def _refuse(self, code: str, text: str) -> None:
        self.client.write(wire.error_response(code, text))
        self.close(drop_unsent=True)

    def terminate(self, reason: str) -> None:
        """Revocation (from any thread): FATAL 57P01 with the reason, then close."""
        self.gateway.loop.call_soon_threadsafe(self._terminate, reason)

    def _terminate(self, reason: str) -> None:
        if not self.closed:
            self._refuse("57P01", f"terminating connection: {reason}")

    def side_lost(self, side: _Side) -> None:
        if side is self.client and self.upstream is not None and self.upstream.transport:
            self.upstream.transport.abort()  # the client is gone: nothing left to deliver
        self.close()

    def close(self, *, drop_unsent: bool = False) -> None:
        """End both sides. ``drop_unsent``: the gateway ends it (revoked, refused, over a
        limit), so client messages still in the database side's buffer are dropped, not
        flushed: their records say interrupted, and they must not run after all."""
        if self.closed:
            return
        self.closed = True
        head = self.pending[0] if self.pending else None
        if head is not None:  # what went out of it before the end
            rows, nbytes = self.scanner.take()
            head.data_rows += rows
            head.bytes_out += nbytes
            if head.rows is None and head.data_rows:
                head.rows = head.data_rows
        while self.pending:
            item = self.pending[0]
            if item is None:
                self.pending.popleft()
            else:
                self._finish(item, "interrupted")
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._end_guardrails()
        upstream = self.upstream
        if drop_unsent and upstream is not None and upstream.transport is not None:
            if upstream.transport.get_write_buffer_size():
                upstream.transport.abort()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
                if not side.lost:
                    # close() waits for the write buffer to drain: a peer that stopped
                    # reading would hold the socket (and up to high_water bytes) forever
                    self.gateway.loop.call_later(CLOSE_GRACE, side.abort_unless_lost)
        self.gateway.forget(self)

    # -- start-up ------------------------------------------------------------------------

    async def _handshake(self) -> None:
        client = self.client
        config = self.gateway.config
        tls_done = False
        while True:
            if not tls_done and await self._starts_with_tls():
                await self._direct_tls()
                tls_done = True
                continue
            packet = await client.read_startup()
            code = wire.int32(packet, 4)
            if code == wire.SSL_REQUEST:
                if client.buf:  # bytes sent before our answer (CVE-2021-23214)
                    raise wire.ProtocolError("data after SSLRequest")
                if config.tls is None or tls_done:
                    client.write(b"N")
                    continue
                assert client.transport is not None
                client.write(b"S")
                transport = await self.gateway.loop.start_tls(
                    client.transport, client, config.tls, server_side=True
                )
                if transport is None:
                    raise _Closed
                client.set_transport(transport)
                tls_done = True
                continue
            if code == wire.GSSENC_REQUEST:
                client.write(b"N")
                continue
            if code == wire.CANCEL_REQUEST and len(packet) == 16:
                await self.gateway.cancel(wire.int32(packet, 8), wire.int32(packet, 12))
                self.close()
                return
            if code >> 16 != 3:
                self._refuse("08P01", "unsupported frontend protocol")
                raise _Closed
            params = wire.startup_params(packet[8:])
            unknown = [name for name in params if name.startswith("_pq_.")]
            if code & 0xFFFF or unknown:  # 3.2 and protocol options: we speak 3.0
                client.write(wire.negotiate_protocol_version(0, unknown))
            break
        if config.require_tls and not tls_done:
            self._refuse("28000", "the gateway accepts only TLS connections")
            raise _Closed
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            self._refuse("28000", "replication connections are not allowed through the gateway")
            raise _Closed
        user = params.get("user", "")
        session = await self._authenticate(user)
        database = params.get("database") or user
        if database != session.upstream.database:
            self._refuse("28000", f'this session is for database "{session.upstream.database}"')
            raise _Closed
        self.session = session
        self._check_startup(session, params)
        forwarded = {
            name: value
            for name, value in params.items()
            if name not in ("user", "database", "replication") and not name.startswith("_pq_.")
        }
        ready = await self._connect_upstream(session.upstream, forwarded)
        self.gateway.established(self)  # counted before the client can see it is in
        self.key = self.gateway.issue_key(self)
        client.write(wire.backend_key_data(*self.key) + wire.message(b"Z", ready))
        self.gateway.live.attach(session.lease_id, self)
        self._start_guardrails(session.policy)
        upstream = self.upstream
        assert upstream is not None
        client.peer, upstream.peer = upstream, client
        to_client, to_server = self.relays()
        upstream.start_relay(to_server)
        client.start_relay(to_client)
        if upstream.buf:
            data = bytes(upstream.buf)
            upstream.buf.clear()
            self.from_server(data)
        if client.buf:
            self._frame_client()

    async def _authenticate(self, user: str) -> GatewaySession:
        """SCRAM-SHA-256 against the session's verifier; an unknown user fails the same way."""
        client = self.client
        # in a thread: the directory may ask the store, which must not stall the loop
        session = (
            await asyncio.get_running_loop().run_in_executor(
                None, self.gateway.directory.lookup, user
            )
            if user
            else None
        )
        verifier = session.verifier if session is not None else self.gateway.mock_verifier(user)
        client.write(wire.authentication(10, b"SCRAM-SHA-256\0\0"))
        server = SCRAM.make_server(lambda _name: verifier.auth_info())
        try:
            kind, body = await client.read_message()
            if kind != ord("p"):
                raise wire.ProtocolError("expected a SASLInitialResponse")
            mechanism, offset = wire.read_cstring(body, 0)
            if mechanism != b"SCRAM-SHA-256":
                raise scramp.ScramException("unsupported mechanism")
            length = wire.int32(body, offset)
            first = body[offset + 4 : offset + 4 + length].decode()
            # libpq sends an empty SCRAM user name (the startup packet has it), which
            # scramp refuses: parse with a placeholder, sign with what the client sent.
            gs2, sep, bare = first.partition(",,")
            placeholder = bare.replace("n=,", "n=*,", 1) if bare.startswith("n=,") else bare
            server.set_client_first(gs2 + sep + placeholder)
            server.client_first_bare = bare
            client.write(wire.authentication(11, server.get_server_first().encode()))
            kind, body = await client.read_message()
            if kind != ord("p"):
                raise wire.ProtocolError("expected a SASLResponse")
            server.set_client_final(body.decode())
            final = server.get_server_final()
        except (scramp.ScramException, struct.error, UnicodeDecodeError):
            session = None
        if session is None:
            self._refuse("28P01", f'password authentication failed for user "{user}"')
            raise _Closed
        client.write(wire.authentication(12, final.encode()) + wire.authentication(0))
        return session

    async def _connect_upstream(self, up: Upstream, params: dict[str, str]) -> bytes:
        """Connect and log in as the session's user; the ReadyForQuery body to pass on."""
        loop = self.gateway.loop
        config = self.gateway.config
        side = self.upstream = _Side(self)
        await asyncio.wait_for(
            loop.create_unix_connection(lambda: side, up.socket)
            if up.socket is not None
            else loop.create_connection(
                lambda: side, up.host, up.port, local_addr=config.source_address
            ),
            config.connect_timeout,
        )
        if up.socket_owner is not None and side.transport is not None:
            reason = not_served_by(side.transport.get_extra_info("socket"), up.socket_owner)
            if reason is not None:  # before any byte: no login reaches whoever it is
                log.error("gateway: the database's socket %s is not used: %s", up.socket, reason)
                self._refuse(
                    "08006",
                    "the gateway cannot reach the database (its socket is not the "
                    "database's: the gateway's log says why)",
                )
                raise _Closed
        if up.tls.context is not None:
            await self._upstream_tls(side, up)
        side.write(wire.startup_message({"user": up.user, "database": up.database, **params}))
        await self._upstream_login(side, up)
        relayed = bytearray()
        while True:
            kind, body = await side.read_message()
            if kind == ord("K"):
                self.upstream_key = (wire.int32(body, 0), wire.int32(body, 4))
            elif kind == ord("Z"):
                self.client.write(bytes(relayed))
                return body
            elif kind == ord("E"):
                self._upstream_refused(body)
            else:  # ParameterStatus, NoticeResponse, NegotiateProtocolVersion
                guarded = self.session is not None and self.session.policy.restricts_statements
                unsafe = _unsafe_setting(body, "is") if guarded and kind == ord("S") else None
                if unsafe is not None:
                    # the database's, role's or server's default: no statement could be
                    # classified safely from the first one on
                    assert self.session is not None
                    self._refuse(
                        "42501",
                        f"the database's setting {unsafe}; role {self.session.role} has its "
                        "statements checked, so it cannot be used through the gateway here",
                    )
                    raise _Closed
                relayed += wire.message(bytes([kind]), body)

    async def _upstream_tls(self, side: _Side, up: Upstream) -> None:
        """SSLRequest, then the TLS handshake, each within connect_timeout (a database that
        never answers must not hold the client until the handshake timeout); a failure is
        the client's 08006 naming the target and what TLS said, before any password."""
        assert self.session is not None and up.tls.context is not None
        timeout = self.gateway.config.connect_timeout
        target = f'target "{self.session.target}"'
        side.write(SSL_REQUEST)
        try:
            answer = await asyncio.wait_for(side.read_exact(1), timeout)
        except TimeoutError:
            self._refuse(
                "08006",
                f"{target}: the database did not answer the gateway's SSLRequest "
                f"within {timeout:g} s",
            )
            raise _Closed from None
        if answer == b"N":
            if up.tls.required:
                self._refuse(
                    "08006",
                    f"{target}: the database does not offer TLS to the gateway, "
                    "and the target's sslmode requires it",
                )
                raise _Closed
            return  # prefer: plain TCP, as libpq goes on
        if answer != b"S" or side.buf:  # bytes before the handshake: injected (CVE-2021-23222)
            self._refuse(
                "08006",
                f"{target}: the database answered the gateway's SSLRequest with "
                "something other than S or N",
            )
            raise _Closed
        assert side.transport is not None
        try:
            transport = await self.gateway.loop.start_tls(
                side.transport,
                side,
                up.tls.context,
                server_hostname=up.host,
                ssl_handshake_timeout=timeout,
            )
        except OSError as exc:  # ssl.SSLError too; its text names no secret (none was sent)
            failure = tls_failure(exc)
            log.warning("gateway connection %d: %s: TLS: %s", self.number, target, failure)
            self._refuse("08006", f"{target}: the gateway's TLS to the database failed: {failure}")
            raise _Closed from None
        if transport is None:
            raise _Closed
        side.set_transport(transport)

    async def _upstream_login(self, side: _Side, up: Upstream) -> None:
        """SCRAM-SHA-256 only, and the server must prove it holds the verifier: the session
        user's password is never sent as cleartext or md5 (which a machine in the middle
        could ask for and keep), and a server that skips authentication is refused."""
        login = ScramLogin(up.user, up.password)
        while True:
            kind, body = await side.read_message()
            if kind == ord("E"):
                self._upstream_refused(body)
            if kind != ord("R"):
                raise wire.ProtocolError("unexpected message during the database's login")
            try:
                reply = login.answer(body)  # scramp's error unless the server's proof holds
            except LoginRefused as refused:
                self._refuse(
                    "28000",
                    "the database let the gateway in without SCRAM-SHA-256; the gateway "
                    "connects only to servers that authenticate the session user by it"
                    if refused.method is None
                    else f"the database asked for authentication method {refused.method}; "
                    "the gateway sends the session user's password by SCRAM-SHA-256 only",
                )
                raise _Closed from None
            if reply is None:
                return
            if reply:
                side.write(reply)

    def _upstream_refused(self, body: bytes) -> None:
        fields = wire.error_fields(body)
        self._refuse(
            fields.get("C", "08006"),
            f"the database refused the gateway's connection: {fields.get('M', '')}",
        )
        raise _Closed

    # -- relay: client -> server ---------------------------------------------------------

    def relays(self) -> tuple[Callable[[bytes], None], Callable[[bytes], None]]:
        """The client side's and the database side's ``data_received`` once relaying: the
        compiled Relay's where it is built (from_client's and from_server's first paths in
        C, these methods for every other chunk), else these methods."""
        if fastwire.Relay is None:
            return self.from_client, self.from_server
        relay = fastwire.Relay(self)
        return relay.client, relay.server

    def from_client(self, data: bytes) -> None:
        if self.idle_timer is not None:
            self.last_active = self.gateway.loop.time()
        buf = self.client.buf
        if (
            buf
            or self.guarding
            or self.upstream is None
            or self.records.backlogged
            or self.skipping  # still dropping up to the Sync of a refused Parse
        ):
            buf += data
            self._frame_client()
            return
        # the hot path (nothing held back, no statement checks): frame the chunk itself and
        # forward it as it came, without copying it into the buffer and out again
        read = fastwire.client_queries
        queries = None if read is None else read(data)  # whole Query messages only
        if queries is not None:
            t0 = monotonic_ns()
            for sql in queries:
                self.pending.append(_Open("query", sql, None, True, t0))
            if self.upstream.transport is not None:
                self.upstream.transport.write(data)
            return
        end = 0
        size = len(data)
        unpack = _UINT32.unpack_from
        inspected = INSPECTED
        try:
            while size - end >= 5:
                stop = end + 1 + unpack(data, end + 1)[0]
                if stop < end + 5:
                    raise wire.ProtocolError("invalid message length")
                if stop > size:
                    if wire.over_client_limit(data[end], stop - end - 1):
                        raise wire.ProtocolError("a message longer than the server takes")
                    break
                kind = data[end]
                if kind == Q:  # _open, inlined
                    sql = str(data[end + 5 : stop - 1], "utf-8", "replace")
                    self.pending.append(_Open("query", sql, None, True, monotonic_ns()))
                elif kind in inspected:
                    self._client_message(kind, data[end + 5 : stop])
                end = stop
        except (wire.ProtocolError, struct.error):
            self._refuse("08P01", "invalid message from the client")
            return
        except _OverLimit as over:
            self._refuse(over.code, over.text)
            return
        transport = self.upstream.transport
        if end < size:
            buf += data[end:]
            data = data[:end]
        if end and transport is not None:
            transport.write(data)
        if self.terminating:
            self.close()

    def _frame_client(self) -> None:
        buf = self.client.buf
        end = 0
        sent = 0  # bytes before this offset are forwarded or dropped already
        upstream = self.upstream.transport if self.upstream is not None else None
        try:
            for kind, start, stop in wire.split_messages(buf):
                if self.skipping or (
                    (self.guarding or self.records.backlogged) and kind in (Q, P, F)
                ):
                    replacement = self._guard(kind, bytes(buf[start:stop]))
                    if replacement is not None:  # not this message, maybe another
                        if upstream is not None:
                            upstream.write(bytes(buf[sent : start - 5]) + replacement)
                        sent = stop
                        end = stop
                        continue
                if kind in INSPECTED:
                    self._client_message(kind, bytes(buf[start:stop]))
                end = stop
            if len(buf) - end >= 5 and wire.over_client_limit(
                buf[end], int(_UINT32.unpack_from(buf, end + 1)[0])
            ):
                raise wire.ProtocolError("a message longer than the server takes")
        except (wire.ProtocolError, struct.error):
            self._refuse("08P01", "invalid message from the client")
            return
        except _OverLimit as over:
            self._refuse(over.code, over.text)
            return
        if end and upstream is not None:
            if end > sent:
                upstream.write(bytes(buf[sent:end]))
            del buf[:end]
        if self.terminating:
            self.close()

    def _client_message(self, kind: int, body: bytes) -> None:
        if kind == Q:
            self._open("query", body[:-1].decode(errors="replace"), None, simple=True)
        elif kind == P:
            name, offset = _object_name(body, 0)
            query, _ = wire.read_cstring(body, offset)
            self._remember(name, query.decode(errors="replace"))
            self.unsynced = True
            self.flushed = False
        elif kind == B:
            portal, offset = _object_name(body, 0)
            statement, offset = _object_name(body, offset)
            params = None if self.gateway.config.params == "none" else self._params(body, offset)
            self.portals[portal] = (self.statements.get(statement, ""), params)
            self.unsynced = True
            self.flushed = False
        elif kind == E:
            portal, _ = _object_name(body, 0)
            sql, params = self.portals.get(portal, ("", None))
            self._open("execute", sql, params, simple=False)
            self.unsynced = True
            self.flushed = False
        elif kind == S:
            self.pending.append(None)
            self.undo.append(None)
            self.unsynced = False
            self.flushed = False
        elif kind == H:
            self.flushed = True
        elif kind == F:
            self._open("function", f"function call, oid {wire.int32(body, 0)}", None, simple=True)
        elif kind == CLOSE:
            name, _ = _object_name(body, 1)
            if body[:1] == b"S":
                previous = self.statements.pop(name, None)
                self.statement_text -= len(previous or "")
                self.undo.append((name, previous))
            else:
                self.portals.pop(name, None)
                self.undo.append((b"", _NO_UNDO))  # its CloseComplete still comes
        elif kind == COPY_DATA:
            if self.copy_in and self.pending and self.pending[0] is not None:
                self.pending[0].bytes_in += len(body)
        elif kind in (COPY_DONE, COPY_FAIL):
            self.copy_in = False
        elif kind == X:
            self.terminating = True

    def _remember(self, name: bytes, sql: str) -> None:
        previous = self.statements.get(name)
        self.undo.append((name, previous))
        self.statement_text += len(sql) - len(previous or "")
        self.statements[name] = sql
        if self.statement_text > MAX_PREPARED_TEXT:
            raise _OverLimit(
                "53200",
                "this connection holds more than "
                f"{MAX_PREPARED_TEXT // (1024 * 1024)} MiB of prepared statements' text at "
                "the gateway; close the statements it no longer uses (the protocol's Close "
                "message), or reconnect",
            )

    def _undo_unconfirmed(self) -> None:
        """An error in an extended-protocol batch: the server skips to the Sync, so the
        Parses and Closes it has not confirmed did nothing there; nor here. (Else a Parse
        refused as a duplicate name, or skipped, would have the gateway record the next
        Execute of that name with a text the server never ran.)"""
        undo = self.undo
        void: list[tuple[bytes, str | None]] = []
        while undo and undo[0] is not None:
            void.append(undo.popleft())  # type: ignore[arg-type]
        for name, previous in reversed(void):
            if previous is _NO_UNDO:
                continue
            self.statement_text -= len(self.statements.get(name, ""))
            if previous is None:
                self.statements.pop(name, None)
            else:
                self.statements[name] = previous
                self.statement_text += len(previous)

    def _deallocated(self, sql: str, tag: bytes) -> None:
        """Forget the prepared statements a completed DEALLOCATE or DISCARD ALL dropped
        (psycopg, for one, deallocates with SQL): their text no longer counts."""
        if tag.startswith((b"DEALLOCATE ALL", b"DISCARD ALL")):
            self.statements.clear()
            self.statement_text = 0
        elif tag.startswith(b"DEALLOCATE"):
            # the names as the server's parser reads them (a regex also matched inside
            # comments and strings, and made the gateway forget statements still there)
            for name in deallocated_names(sql):
                key = name.encode()[:MAX_NAME]
                self.statement_text -= len(self.statements.pop(key, ""))

    def _params(self, body: bytes, offset: int) -> tuple[str | None, ...]:
        """Bind parameters as the policy shows them: "<n bytes>" or their text."""
        nformats = wire.uint16(body, offset)
        formats = [wire.uint16(body, offset + 2 + 2 * i) for i in range(nformats)]
        offset += 2 + 2 * nformats
        count = wire.uint16(body, offset)
        offset += 2
        shown: list[str | None] = []
        kept = 0  # characters shown so far
        redacted = self.gateway.config.params == "redacted"
        for index in range(count):
            if kept >= MAX_PARAMS_TEXT:
                shown.append(f"<{count - index} more parameter(s) not kept>")
                break
            length = wire.int32(body, offset)
            offset += 4
            if length < 0:
                shown.append(None)
                kept += 4  # as the JSON null
                continue
            if redacted:
                text = f"<{length} bytes>"
            else:
                # one format per parameter, one for all, or none (text); another count is
                # the server's error to give, not an IndexError here
                binary = (
                    formats[index]
                    if index < nformats and nformats > 1
                    else formats[0]
                    if nformats == 1
                    else 0
                ) == 1
                value = body[offset : offset + min(length, MAX_PARAM_TEXT)]  # no more decoded
                text = ("\\x" + value.hex() if binary else value.decode(errors="replace"))[
                    :MAX_PARAM_TEXT
                ]
            offset += length
            shown.append(text)
            kept += len(text)
        return tuple(shown)

    def _open(
        self, kind: Kind, sql: str, params: tuple[str | None, ...] | None, *, simple: bool
    ) -> None:
        self.pending.append(_Open(kind, sql, params, simple, monotonic_ns()))

    # -- relay: server -> client ---------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        if self.limiting:
            self._from_server_limited(data)
            return
        # scanned first: a statement's record is added before its client sees the answer
        # (a client's next move, or a test's flush, never races the record)
        pending = self.pending
        if pending and self.idle_timer is None and not self.portals:
            head = pending[0]
            if head is not None and head.simple:
                # the rest of a simple query's answer, read at once (on_server_message's
                # CommandComplete and ReadyForQuery for it, in one go)
                answer = self.scanner.whole_answer(data)
                if answer is not None:
                    counted, rows, nbytes, status = answer
                    head.bytes_out += nbytes
                    head.data_rows += rows
                    if counted is not None:
                        head.rows = (head.rows or 0) + counted
                    self.status = status
                    pending.popleft()
                    self._record(head, "completed")
                    transport = self.client.transport
                    if transport is not None and not self.closed:
                        transport.write(data)
                    return
        self._scan_server(data)

    def _scan_server(self, data: bytes) -> None:
        """from_server past its first path: the chunk fed to the scanner, then forwarded."""
        try:
            self.scanner.feed(data)
        except wire.ProtocolError:
            log.error("gateway connection %d: invalid bytes from the database", self.number)
            self.close()
            return
        transport = self.client.transport
        if transport is not None and not self.closed:
            transport.write(data)

    def on_server_message(self, kind: int, body: bytes, rows: int, nbytes: int) -> None:
        # ReadyForQuery and CommandComplete first: one or two of them per statement, and
        # this runs for each (module constants, not wire.X: an attribute load each)
        pending = self.pending
        head = pending[0] if pending else None
        if head is not None:
            head.bytes_out += nbytes
            head.data_rows += rows
        if kind == _READY:
            self.status = body[:1]
            if self.limiting or self.idle_timer is not None:
                self._ready_for_query(body)
            while pending and pending[0] is not None and not pending[0].simple:
                self._finish(pending[0], "not_run")
            if pending:
                item = pending.popleft()
                if item is not None:
                    self._record(item, "completed")
                elif self.undo:  # a Sync's: what its batch left unconfirmed did nothing
                    self._undo_unconfirmed()
                    if self.undo and self.undo[0] is None:
                        self.undo.popleft()
            if self.portals and not pending and not self.unsynced and body[:1] == b"I":
                # every Bind seen came before this Sync and the transaction is over: the
                # server has dropped the portals (none is holdable), so do we
                self.portals.clear()
        elif kind == _COMPLETE:
            if head is not None:
                counted = wire.command_rows(body)
                if counted is not None:
                    head.rows = (head.rows or 0) + counted
                if self.statements and body[:1] == b"D":  # DEALLOCATE, DISCARD (DELETE)
                    self._deallocated(head.sql, bytes(body))
                if not head.simple:
                    self._finish(head, "completed")
        elif kind == wire.PARAMETER_STATUS:
            if self.guarding:
                self._parameter_changed(body)
        elif kind == wire.EMPTY_QUERY:
            if head is not None and not head.simple:
                self._finish(head, "completed")
        elif kind == wire.PORTAL_SUSPENDED:
            if head is not None and not head.simple:
                head.rows = head.data_rows
                self._finish(head, "completed")
        elif kind == wire.PARSE_COMPLETE or kind == wire.CLOSE_COMPLETE:
            if self.undo and self.undo[0] is not None:
                self.undo.popleft()  # confirmed: it stays as it is now
        elif kind == wire.ERROR_RESPONSE:
            self.copy_in = False
            if self.undo and (head is None or not head.simple):
                self._undo_unconfirmed()
            if head is None:
                return  # Parse/Bind/Describe without an Execute, or a FATAL at the end
            if head.sqlstate is None:
                head.sqlstate = wire.sqlstate(body)
            if not head.simple:
                self._finish(head, "completed")
                # the server skips the rest of the pipeline up to the next Sync
                while pending and pending[0] is not None and not pending[0].simple:
                    self._finish(pending[0], "not_run")
        elif kind in (wire.COPY_IN_RESPONSE, wire.COPY_OUT_RESPONSE, wire.COPY_BOTH_RESPONSE):
            if head is not None:
                head.kind = "copy"
            self.copy_in = kind != wire.COPY_OUT_RESPONSE

    def _finish(self, item: _Open, status: Status) -> None:
        self.pending.popleft()  # always the head
        self._record(item, status)

    def _record(self, item: _Open, status: Status) -> None:
        if item.rule is not None and status == "completed":
            status = "refused"
        session = self.session
        assert session is not None
        # a tuple in StatementRecord's field order: the writer's thread builds the record
        # (and the datetime), off the event loop
        t0 = item.t0
        self.add_record(
            (
                session.lease_id,
                session.person,
                session.target,
                session.role,
                item.kind,
                item.sql,
                self.params_policy,
                item.params,
                t0 + self.wall_offset,
                monotonic_ns() - t0,
                item.rows,
                item.bytes_out,
                item.bytes_in,
                item.sqlstate,
                status,
                self.number,
                item.rule,
            )
        )

    # -- guardrails ----------------------------------------------------------------------

    def _start_guardrails(self, policy: Policy) -> None:
        self.policy = policy
        self.guarding = policy.restricts_statements
        scanner = self.scanner
        if policy.max_rows_per_result is not None:
            scanner.row_limit = policy.max_rows_per_result
        if policy.max_bytes_per_session is not None:
            scanner.byte_limit = self._bytes_left()
        self.limiting = (
            policy.max_rows_per_result is not None or policy.max_bytes_per_session is not None
        )
        if policy.idle_timeout is not None:
            self.last_active = self.gateway.loop.time()
            self.idle_timer = self.gateway.loop.call_later(policy.idle_timeout, self._check_idle)

    def _end_guardrails(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.limiting:
            self._count_bytes()

    def _check_startup(self, session: GatewaySession, params: dict[str, str]) -> None:
        """Start-up settings that would make the server read text unlike our parser."""
        name = unsafe_startup(params) if session.policy.restricts_statements else None
        if name is not None:
            rule = guardrails.class_rule(guardrails.StatementClass.PARSER_SETTINGS)
            self._refuse(
                "42501",
                f"dbaccess gateway: the start-up parameter {name} is not allowed for role "
                f"{session.role} (rule {rule})",
            )
            raise _Closed

    def _parameter_changed(self, body: bytes) -> None:
        """The backstop for what the text did not show (a function's SET): once the server
        lexes unlike our parser, no later statement can be classified, so end it."""
        unsafe = _unsafe_setting(body, "changed to")
        if unsafe is not None:
            self._refuse("42501", f"terminating connection: {unsafe}")

    def _guard(self, kind: int, body: bytes) -> bytes | None:
        """None: forward the message; else what to send upstream instead (maybe nothing)."""
        if self.skipping:  # after a refused Parse, as the server skips after an error
            if kind == S:
                self.skipping = False
                self.client.write(wire.message(b"Z", self.status))
            elif kind == X:
                self.terminating = True
            return b""
        session = self.session
        assert session is not None
        # what cannot be recorded is not run (a store that has taken nothing for seconds)
        backlogged = self.records.backlogged
        if kind == F:
            sql = f"function call, oid {wire.int32(body, 0)}"
            classes: frozenset[guardrails.StatementClass] | None = FUNCTION_CALL_CLASSES
        elif kind == Q:
            sql = body[:-1].decode(errors="replace")
            classes = None if backlogged else classify(sql)
        else:
            name, offset = wire.read_cstring(body, 0)
            query, _ = wire.read_cstring(body, offset)
            sql = query.decode(errors="replace")
            classes = None if backlogged else classify(sql)
        refusal = (
            UNRECORDED if backlogged else guardrails.decide(self.policy, session.role, classes)
        )
        if refusal is None:
            return None
        simple = kind != P
        item = _Open(
            "function" if kind == F else "query" if simple else "execute",
            sql,
            None,
            simple,
            time.monotonic_ns(),
            sqlstate=refusal.sqlstate,
            rule=refusal.rule,
        )
        log.info("gateway connection %d: refused (%s)", self.number, refusal.rule)
        if self.pending or self.unsynced:
            # earlier messages are still unanswered: the refusal must come after their
            # answers, and end the batch as an error would, so let the server refuse it
            self.pending.append(item)
            text = REFUSED_TEXT.format(refusal.rule.replace(".", "_")).encode() + b"\0"
            if kind == P:
                self.unsynced = True
                self._remember(name, sql)  # for the records of its skipped Executes
                return wire.message(b"P", wire.cstring(name.decode()) + text + b"\0\0")
            return wire.message(b"Q", text)
        if refusal is not UNRECORDED or self.records.room_for_refusal():
            self._record(item, "completed")
        error = wire.error_response(refusal.sqlstate, refusal.message, severity="ERROR")
        if simple:
            self.client.write(error + wire.message(b"Z", self.status))
        else:
            self.client.write(error)
            self.skipping = True
        return b""

    def on_limit(self, start: int, rows_exceeded: bool) -> None:
        """Over the rows or bytes limit: the rest of this answer is dropped, the query
        cancelled, and the client gets an error before the server's ReadyForQuery."""
        if self.discard_rule is not None:
            return
        rule = guardrails.ROWS_RULE if rows_exceeded else guardrails.BYTES_RULE
        self.discard_rule = rule
        self.events.append((start, None))
        head = self.pending[0] if self.pending else None
        if head is not None:
            head.rule, head.sqlstate = rule, "54000"
        log.info("gateway connection %d: answer cut (%s)", self.number, rule)
        self.gateway.in_background(self.gateway.forward_cancel(self))

    def _ready_for_query(self, body: bytes) -> None:
        if self.idle_timer is not None:
            self.last_active = self.gateway.loop.time()
        if not self.limiting:
            return
        if self.discard_rule is not None:
            rule, self.discard_rule = self.discard_rule, None
            policy = self.policy
            limit = (
                f"{policy.max_rows_per_result} rows per result"
                if rule == guardrails.ROWS_RULE
                else f"{policy.max_bytes_per_session} bytes per session"
            )
            text = (
                f"dbaccess gateway: the answer went over the limit of {limit} for role "
                f"{self.session.role if self.session else ''} (rule {rule})"
            )
            error = wire.error_response("54000", text, severity="ERROR")
            self.events.append((self.scanner.end, error + wire.message(b"Z", body)))
        if self.policy.max_rows_per_result is not None:
            self.scanner.row_limit = self.policy.max_rows_per_result
        if self.policy.max_bytes_per_session is not None:
            self._count_bytes()
            self.scanner.byte_limit = self.scanner.total + self._bytes_left()

    def _from_server_limited(self, data: bytes) -> None:
        """from_server with cuts: bytes between a cut and the ReadyForQuery after it are
        not forwarded; in their place the client gets the limit's error."""
        self.events.clear()
        dropping = self.discard_rule is not None
        held, self.held_header = self.held_header, b""
        try:
            self.scanner.feed(data)
        except wire.ProtocolError:
            log.error("gateway connection %d: invalid bytes from the database", self.number)
            self.close()
            return
        transport = self.client.transport
        if transport is None or self.closed:
            return
        # A header this chunk's end cuts is held back until its message is known: should
        # that row go over a limit, the cut falls before it, never inside it. Offsets are
        # the scanner's, in ``data``; the held bytes come before them.
        chunk = held + data if held else data
        base = len(held)
        end = len(chunk) - self.scanner.partial_header
        pos = 0
        for at, resume in self.events:
            at += base
            if resume is None:  # cut
                if not dropping and at > pos:
                    transport.write(chunk[pos:at])
                dropping = True
            else:
                transport.write(resume)
                dropping = False
            pos = at
        if not dropping:
            if pos < end:
                transport.write(chunk[pos:end] if pos or end < len(chunk) else chunk)
            self.held_header = chunk[max(pos, end) :]

    def _count_bytes(self) -> None:
        session = self.session
        if session is None:
            return
        delta = self.scanner.total - self.bytes_counted
        self.bytes_counted = self.scanner.total
        used = self.gateway.session_bytes
        used[session.lease_id] = used.get(session.lease_id, 0) + delta

    def _bytes_left(self) -> int:
        limit = self.policy.max_bytes_per_session
        if limit is None or self.session is None:
            return wire.NO_LIMIT
        return limit - self.gateway.session_bytes.get(self.session.lease_id, 0)

    def _check_idle(self) -> None:
        timeout = self.policy.idle_timeout
        if self.closed or timeout is None:
            return
        loop = self.gateway.loop
        idle = loop.time() - self.last_active
        # waiting for the server: a statement is pending and the client has asked for its
        # answer (a Sync, a Flush, a simple Query); mid-batch without either, the server
        # waits for the client, which is as idle as one between statements
        waiting = bool(self.pending) and (self.flushed or not self.unsynced)
        if not waiting and idle >= timeout:
            self._refuse(
                "57P05",
                f"terminating connection due to idle-session timeout of {timeout:g} s "
                f"(dbaccess gateway, rule {guardrails.IDLE_RULE})",
            )
            return
        wait = timeout - idle if idle < timeout else timeout
        self.idle_timer = loop.call_later(max(wait, 0.05), self._check_idle)

    # -- direct TLS (sslnegotiation=direct) ----------------------------------------------

    async def _starts_with_tls(self) -> bool:
        client = self.client
        while not client.buf:
            await client._more()
        return client.buf[0] == TLS_HANDSHAKE

    async def _direct_tls(self) -> None:
        """TLS from the first byte (libpq 17+), with ALPN "postgresql" required as
        PostgreSQL 17 requires it (a client without it may be a confused HTTPS client)."""
        client = self.client
        context = self.gateway.config.tls
        if context is None:
            raise _Closed  # a TLS client and no certificate: nothing to say in clear text
        transport = client.transport
        assert transport is not None
        hello = bytes(client.buf)
        client.buf.clear()
        loop = self.gateway.loop
        task = loop.create_task(loop.start_tls(transport, client, context, server_side=True))
        # the ClientHello was read already: hand it to the TLS protocol start_tls installs,
        # after its connection_made and before the socket is read again
        while transport.get_protocol() is client and not task.done():
            await asyncio.sleep(0)
        loop.call_soon(_feed_protocol, transport.get_protocol(), hello)
        tls = await task
        if tls is None:
            raise _Closed
        client.set_transport(tls)
        ssl_object = tls.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
            self._refuse(
                "08P01",
                "received direct SSL connection request without ALPN protocol "
                "negotiation extension",
            )
            raise _Closed


class Gateway:
    """The listening server; ``end(lease_id, reason)`` closes a session's connections."""

    def __init__(
        self,
        directory: SessionDirectory,
        records: RecordWriter,
        config: GatewayConfig | None = None,
        live: LiveConnections | None = None,
    ) -> None:
        self.directory = directory
        self.records = records
        self.config = config or GatewayConfig()
        self.live = live or LiveConnections()
        self._numbers = itertools.count(1)
        self._connections: set[Connection] = set()
        self._keys: dict[tuple[int, int], Connection] = {}
        self._peers: CancelPeers | None = None
        self._tags: dict[bytes, Connection] = {}  # the keys' tags, for the peers' cancels
        # the limits' counts: changed at a connection's start and end only (not per chunk)
        self.startups = 0  # connections in their start-up
        self.startups_by_source: dict[str, int] = {}
        self.established_connections = 0
        self.refused = 0  # connections refused by a cap, since start
        self._refused_logged = (0, -REFUSAL_LOG_INTERVAL)  # (refused, monotonic) at the last log
        # tasks no connection owns (a cancel after a cut answer): referenced until done, so
        # that none is collected half-way, and ended by close() with what they opened
        self._background: set[asyncio.Task[None]] = set()
        # every socket not yet lost, the closed connections' too (one may still be flushing
        # to a peer that does not read): close() ends them all
        self.open_sides: set[_Side] = set()
        self._mock_salt_key = self.config.mock_salt_key or secrets.token_urlsafe(32)
        self.session_bytes: dict[str, int] = {}  # bytes out per lease (guardrails)
        if self.config.tls is not None:  # libpq 17+ checks it, direct TLS requires it
            self.config.tls.set_alpn_protocols([ALPN])
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] = (self.config.host, self.config.port)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._server is not None, "the gateway is not started"
        return self._server.get_loop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept,
            self.config.host,
            self.config.port,
            reuse_port=self.config.reuse_port or None,
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        if self.config.cancel_peers and self.config.mock_salt_key is not None:
            peers = CancelPeers(self.config.mock_salt_key, self.address, self._peer_cancel)
            if peers.open(loop):
                self._peers = peers

    def _accept(self) -> _Side:
        connection = Connection(self, next(self._numbers))
        self._connections.add(connection)
        return connection.client

    @property
    def connections(self) -> int:
        return len(self._connections)

    def admit(self, connection: Connection) -> str | None:
        """Count a new connection as starting, or say why it is refused (a cap is full)."""
        refusal = self._over_a_cap(connection)
        if refusal is not None:
            self._log_refused(refusal)
            return refusal
        source = connection.source
        self.startups += 1
        self.startups_by_source[source] = self.startups_by_source.get(source, 0) + 1
        connection.phase = _STARTING
        return None

    def _log_refused(self, refusal: str) -> None:
        """A warning at most every REFUSAL_LOG_INTERVAL: a flood must not flood the log.
        (A TLS client may not show the reason: libpq hides what a server sends before
        TLS, CVE-2024-10977; this log is where an operator reads it.)"""
        self.refused += 1
        count, at = self._refused_logged
        now = time.monotonic()
        if now - at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "gateway: %d connection(s) refused since the last such warning, the latest "
                "with: %s",
                self.refused - count,
                refusal,
            )
            self._refused_logged = (self.refused, now)

    def _over_a_cap(self, connection: Connection) -> str | None:
        config = self.config
        source = connection.source
        if self.startups + self.established_connections >= config.max_connections:
            return (
                "too many connections at the gateway (max_connections = "
                f"{config.max_connections}); try again later"
            )
        if self.startups >= config.max_startups:
            return (
                "too many connections are starting at the gateway (max_startups = "
                f"{config.max_startups}); try again in a moment"
            )
        from_source = self.startups_by_source.get(source, 0)
        if from_source >= config.max_startups_per_source:
            return (
                f"too many connections from {source} are starting at the gateway "
                f"(max_startups_per_source = {config.max_startups_per_source}); "
                "try again in a moment"
            )
        return None

    def established(self, connection: Connection) -> None:
        """The start-up is over (client authenticated, upstream logged in)."""
        if connection.phase == _STARTING:
            self._end_startup(connection)
            self.established_connections += 1
            connection.phase = _ESTABLISHED

    def _end_startup(self, connection: Connection) -> None:
        self.startups -= 1
        left = self.startups_by_source[connection.source] - 1
        if left:
            self.startups_by_source[connection.source] = left
        else:
            del self.startups_by_source[connection.source]

    def forget(self, connection: Connection) -> None:
        if connection.phase == _STARTING:
            self._end_startup(connection)
        elif connection.phase == _ESTABLISHED:
            self.established_connections -= 1
        connection.phase = _GONE
        self._connections.discard(connection)
        if connection.key is not None:
            self._keys.pop(connection.key, None)
            if self._peers is not None:
                self._tags.pop(self._peers.tag(*connection.key), None)
        if connection.session is not None:
            self.live.detach(connection.session.lease_id, connection)

    def issue_key(self, connection: Connection) -> tuple[int, int]:
        peers = self._peers
        while True:
            # with peers, the pid field's low bits are this process's slot: a peer given
            # the key knows whose it is
            pid = peers.new_pid_field() if peers is not None else secrets.randbelow(2**31 - 1) + 1
            key = (pid, secrets.randbits(32) - 2**31)
            if key not in self._keys:
                self._keys[key] = connection
                if peers is not None:
                    self._tags[peers.tag(*key)] = connection
                return key

    def mock_verifier(self, user: str) -> ScramVerifier:
        """For a user name no session has: a stable salt, keys nobody knows."""
        salt = mock_salt(self._mock_salt_key, user)
        return ScramVerifier(salt, secrets.token_bytes(32), secrets.token_bytes(32))

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cancel(self, pid: int, secret: int) -> None:
        """Forward a CancelRequest for a key we issued, over a fresh upstream connection."""
        connection = self._keys.get((pid, secret))
        if connection is not None:
            await self.forward_cancel(connection)
        elif self._peers is not None:
            self._peers.send(pid, secret)  # another process's, maybe

    def _peer_cancel(self, tag: bytes) -> None:
        connection = self._tags.get(tag)
        if connection is not None:
            self.in_background(self.forward_cancel(connection))

    async def forward_cancel(self, connection: Connection) -> None:
        """Cancel what the connection's upstream runs, over a fresh upstream connection."""
        if connection.upstream_key is None or connection.session is None:
            return  # like the server: no answer either way
        up = connection.session.upstream
        timeout = self.config.connect_timeout
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(up.socket)
                if up.socket is not None
                else asyncio.open_connection(
                    up.host, up.port, local_addr=self.config.source_address
                ),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.warning("gateway: cancel not forwarded (%s)", type(exc).__name__)
            return
        try:
            if up.socket_owner is not None:
                reason = not_served_by(writer.get_extra_info("socket"), up.socket_owner)
                if reason is not None:
                    log.warning("gateway: cancel not forwarded (%s)", reason)
                    return
            if up.tls.context is not None:  # as the session's connection went
                writer.write(SSL_REQUEST)
                answer = await asyncio.wait_for(reader.readexactly(1), timeout)
                if answer == b"S":
                    await writer.start_tls(
                        up.tls.context, server_hostname=up.host, ssl_handshake_timeout=timeout
                    )
                elif answer != b"N" or up.tls.required:
                    log.warning("gateway: cancel not forwarded (the database offers no TLS)")
                    return
            writer.write(wire.cancel_request(*connection.upstream_key))
            await writer.drain()
            await asyncio.wait_for(reader.read(1), timeout)  # its close
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:  # SSLError: OSError
            log.warning("gateway: cancel not forwarded (%s)", type(exc).__name__)
        finally:
            writer.close()

    def end(self, lease_id: str, reason: str) -> int:
        return self.live.end(lease_id, reason)

    async def close(self) -> None:
        if self._peers is not None:
            self._peers.close()
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        tasks = [c._task for c in connections if c._task is not None and not c._task.done()]
        for connection in connections:
            connection.close()
        for task in self._background:
            task.cancel()
        tasks += self._background
        # The cancelled start-ups finish, and the closed transports' connection_lost runs
        # (scheduled by close): a loop stopped before would leave both half-done, and
        # their sockets open.
        await asyncio.gather(*tasks, return_exceptions=True)
        sides = list(self.open_sides)
        # A TLS transport closes once the peer answers its close_notify (or after
        # ssl_shutdown_timeout, 30 s): a peer that does not answer within a moment has
        # its socket aborted.
        deadline = asyncio.get_running_loop().time() + CLOSE_GRACE
        while any(not s.lost for s in sides) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for side in sides:
            side.abort_unless_lost()
        for _ in range(3):
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()


async def serve(
    directory: SessionDirectory,
    records: RecordWriter,
    config: GatewayConfig | None = None,
    live: LiveConnections | None = None,
) -> Gateway:
    """Start a gateway on the running loop; ``await gateway.close()`` stops it."""
    gateway = Gateway(directory, records, config, live)
    await gateway.start()
    return gateway


def _feed_protocol(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver bytes read before ``start_tls`` to the TLS protocol it installed."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        while data:
            buffer = memoryview(protocol.get_buffer(len(data)))
            count = min(len(buffer), len(data))
            buffer[:count] = data[:count]
            protocol.buffer_updated(count)
            data = data[count:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
