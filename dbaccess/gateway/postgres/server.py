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
import hashlib
import itertools
import logging
import secrets
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, cast

import scramp

from dbaccess.gateway.postgres import wire
from dbaccess.gateway.records import Kind, ParamsPolicy, StatementRecord, Status
from dbaccess.gateway.sessions import (
    GatewaySession,
    LiveConnections,
    ScramVerifier,
    SessionDirectory,
    Upstream,
)

log = logging.getLogger(__name__)

SCRAM = scramp.ScramMechanism("SCRAM-SHA-256")
_INT32 = struct.Struct("!i")
MAX_PARAM_TEXT = 4096  # characters of one bind parameter kept under params = "full"

Q, P, B, E, S, F, X, CLOSE = (ord(c) for c in "QPBESFXC")
COPY_DATA, COPY_DONE, COPY_FAIL = (ord(c) for c in "dcf")
INSPECTED = frozenset({Q, P, B, E, S, F, X, CLOSE, COPY_DATA, COPY_DONE, COPY_FAIL})


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None  # None: SSLRequest is answered 'N'
    require_tls: bool = False
    upstream_tls: ssl.SSLContext | None = None  # None: plain TCP to the database
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
    connect_timeout: float = 10.0

    @property
    def source_address(self) -> tuple[str, int] | None:
        return None if self.upstream_source is None else (self.upstream_source, 0)


class RecordWriter(Protocol):
    def add(self, record: StatementRecord) -> None: ...


class _Closed(Exception):
    """The connection ended (or was refused) during the handshake."""


class _Side(asyncio.Protocol):
    """One socket. Until ``relay`` is set, bytes wait in ``buf`` for the handshake coroutine;
    after it, each chunk goes straight to ``relay``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.relay: Callable[[bytes], None] | None = None
        self.peer: _Side | None = None  # the side that stops reading while we cannot write
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.set_transport(cast(asyncio.Transport, transport))

    def set_transport(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        config = self.conn.gateway.config
        transport.set_write_buffer_limits(config.high_water, config.low_water)

    def data_received(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay(data)
        else:
            self.buf += data
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        self.conn.side_lost(self)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

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
            for kind, start, end in wire.split_messages(self.buf):
                body = bytes(self.buf[start:end])
                del self.buf[:end]
                return kind, body
            await self._more()


class _ClientSide(_Side):
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
    started: datetime
    t0: float
    rows: int | None = None
    data_rows: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    sqlstate: str | None = None


class Connection:
    """One client connection and its upstream connection."""

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
        self.portals: dict[bytes, tuple[str, tuple[str | None, ...] | None]] = {}
        self.scanner = wire.ServerScanner(self)
        self.copy_in = False
        self.terminating = False
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
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
        self.close()

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        while self.pending:
            item = self.pending[0]
            if item is None:
                self.pending.popleft()
            else:
                self._finish(item, "interrupted")
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.gateway.forget(self)

    # -- start-up ------------------------------------------------------------------------

    async def _handshake(self) -> None:
        client = self.client
        config = self.gateway.config
        tls_done = False
        while True:
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
        forwarded = {
            name: value
            for name, value in params.items()
            if name not in ("user", "database", "replication") and not name.startswith("_pq_.")
        }
        ready = await self._connect_upstream(session.upstream, forwarded)
        self.key = self.gateway.issue_key(self)
        client.write(wire.backend_key_data(*self.key) + wire.message(b"Z", ready))
        self.gateway.live.attach(session.lease_id, self)
        upstream = self.upstream
        assert upstream is not None
        client.peer, upstream.peer = upstream, client
        upstream.relay = self.from_server
        client.relay = self.from_client
        if upstream.buf:
            data = bytes(upstream.buf)
            upstream.buf.clear()
            self.from_server(data)
        if client.buf:
            self._frame_client()

    async def _authenticate(self, user: str) -> GatewaySession:
        """SCRAM-SHA-256 against the session's verifier; an unknown user fails the same way."""
        client = self.client
        session = self.gateway.directory.lookup(user) if user else None
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
            loop.create_connection(
                lambda: side, up.host, up.port, local_addr=config.source_address
            ),
            config.connect_timeout,
        )
        if config.upstream_tls is not None:
            side.write(_INT32.pack(8) + _INT32.pack(wire.SSL_REQUEST))
            if await side.read_exact(1) != b"S":
                self._refuse("08006", "the database does not offer TLS to the gateway")
                raise _Closed
            assert side.transport is not None
            transport = await loop.start_tls(
                side.transport, side, config.upstream_tls, server_hostname=up.host
            )
            if transport is None:
                raise _Closed
            side.set_transport(transport)
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
                relayed += wire.message(bytes([kind]), body)

    async def _upstream_login(self, side: _Side, up: Upstream) -> None:
        scram: scramp.ScramClient | None = None
        while True:
            kind, body = await side.read_message()
            if kind == ord("E"):
                self._upstream_refused(body)
            if kind != ord("R"):
                raise wire.ProtocolError("unexpected message during the database's login")
            code = wire.int32(body, 0)
            if code == 0:
                return
            if code == 3:  # cleartext, as the server asks
                side.write(wire.message(b"p", wire.cstring(up.password)))
            elif code == 5:  # md5
                inner = hashlib.md5((up.password + up.user).encode()).hexdigest().encode()
                digest = hashlib.md5(inner + body[4:8]).hexdigest()
                side.write(wire.message(b"p", wire.cstring("md5" + digest)))
            elif code == 10:
                if b"SCRAM-SHA-256\0" not in body[4:]:
                    raise wire.ProtocolError("the database offers no SCRAM-SHA-256")
                scram = scramp.ScramClient(["SCRAM-SHA-256"], up.user, up.password)
                first = scram.get_client_first().encode()
                side.write(
                    wire.message(
                        b"p", wire.cstring("SCRAM-SHA-256") + _INT32.pack(len(first)) + first
                    )
                )
            elif code == 11 and scram is not None:
                scram.set_server_first(body[4:].decode())
                side.write(wire.message(b"p", scram.get_client_final().encode()))
            elif code == 12 and scram is not None:
                scram.set_server_final(body[4:].decode())
            else:
                raise wire.ProtocolError(f"unsupported authentication request {code}")

    def _upstream_refused(self, body: bytes) -> None:
        fields = wire.error_fields(body)
        self._refuse(
            fields.get("C", "08006"),
            f"the database refused the gateway's connection: {fields.get('M', '')}",
        )
        raise _Closed

    # -- relay: client -> server ---------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        self.client.buf += data
        self._frame_client()

    def _frame_client(self) -> None:
        buf = self.client.buf
        end = 0
        try:
            for kind, start, stop in wire.split_messages(buf):
                if kind in INSPECTED:
                    self._client_message(kind, bytes(buf[start:stop]))
                end = stop
        except (wire.ProtocolError, struct.error):
            self._refuse("08P01", "invalid message from the client")
            return
        if end and self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.write(bytes(buf[:end]))
            del buf[:end]
        if self.terminating:
            self.close()

    def _client_message(self, kind: int, body: bytes) -> None:
        if kind == Q:
            self._open("query", body[:-1].decode(errors="replace"), None, simple=True)
        elif kind == P:
            name, offset = wire.read_cstring(body, 0)
            query, _ = wire.read_cstring(body, offset)
            self.statements[name] = query.decode(errors="replace")
        elif kind == B:
            portal, offset = wire.read_cstring(body, 0)
            statement, offset = wire.read_cstring(body, offset)
            params = None if self.gateway.config.params == "none" else self._params(body, offset)
            self.portals[portal] = (self.statements.get(statement, ""), params)
        elif kind == E:
            portal, _ = wire.read_cstring(body, 0)
            sql, params = self.portals.get(portal, ("", None))
            self._open("execute", sql, params, simple=False)
        elif kind == S:
            self.pending.append(None)
        elif kind == F:
            self._open("function", f"function call, oid {wire.int32(body, 0)}", None, simple=True)
        elif kind == CLOSE:
            name, _ = wire.read_cstring(body, 1)
            (self.statements if body[:1] == b"S" else self.portals).pop(name, None)
        elif kind == COPY_DATA:
            if self.copy_in and self.pending and self.pending[0] is not None:
                self.pending[0].bytes_in += len(body)
        elif kind in (COPY_DONE, COPY_FAIL):
            self.copy_in = False
        elif kind == X:
            self.terminating = True

    def _params(self, body: bytes, offset: int) -> tuple[str | None, ...]:
        """Bind parameters as the policy shows them: "<n bytes>" or their text."""
        nformats = wire.int16(body, offset)
        formats = [wire.int16(body, offset + 2 + 2 * i) for i in range(nformats)]
        offset += 2 + 2 * nformats
        count = wire.int16(body, offset)
        offset += 2
        shown: list[str | None] = []
        for index in range(count):
            length = wire.int32(body, offset)
            offset += 4
            if length < 0:
                shown.append(None)
                continue
            value = body[offset : offset + length]
            offset += length
            if self.gateway.config.params == "redacted":
                shown.append(f"<{length} bytes>")
                continue
            binary = (formats[index] if nformats > 1 else formats[0] if formats else 0) == 1
            text = "\\x" + value.hex() if binary else value.decode(errors="replace")
            shown.append(text[:MAX_PARAM_TEXT])
        return tuple(shown)

    def _open(
        self, kind: Kind, sql: str, params: tuple[str | None, ...] | None, *, simple: bool
    ) -> None:
        self.pending.append(_Open(kind, sql, params, simple, datetime.now(UTC), time.monotonic()))

    # -- relay: server -> client ---------------------------------------------------------

    def from_server(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None:
            transport.write(data)
        try:
            self.scanner.feed(data)
        except wire.ProtocolError:
            log.error("gateway connection %d: invalid bytes from the database", self.number)
            self.close()

    def on_server_message(self, kind: int, body: bytes, rows: int, nbytes: int) -> None:
        pending = self.pending
        head = pending[0] if pending else None
        if head is not None:
            head.bytes_out += nbytes
            head.data_rows += rows
        if kind == wire.COMMAND_COMPLETE:
            if head is not None:
                counted = wire.command_rows(body)
                if counted is not None:
                    head.rows = (head.rows or 0) + counted
                if not head.simple:
                    self._finish(head, "completed")
        elif kind == wire.EMPTY_QUERY:
            if head is not None and not head.simple:
                self._finish(head, "completed")
        elif kind == wire.PORTAL_SUSPENDED:
            if head is not None and not head.simple:
                head.rows = head.data_rows
                self._finish(head, "completed")
        elif kind == wire.ERROR_RESPONSE:
            self.copy_in = False
            if head is None:
                return  # Parse/Bind/Describe without an Execute, or a FATAL at the end
            if head.sqlstate is None:
                head.sqlstate = wire.sqlstate(body)
            if not head.simple:
                self._finish(head, "completed")
                # the server skips the rest of the pipeline up to the next Sync
                while pending and pending[0] is not None and not pending[0].simple:
                    self._finish(pending[0], "not_run")
        elif kind == wire.READY_FOR_QUERY:
            while pending and pending[0] is not None and not pending[0].simple:
                self._finish(pending[0], "not_run")
            if pending:
                item = pending[0]
                if item is None:
                    pending.popleft()
                else:
                    self._finish(item, "completed")
        elif kind in (wire.COPY_IN_RESPONSE, wire.COPY_OUT_RESPONSE, wire.COPY_BOTH_RESPONSE):
            if head is not None:
                head.kind = "copy"
            self.copy_in = kind != wire.COPY_OUT_RESPONSE

    def _finish(self, item: _Open, status: Status) -> None:
        self.pending.popleft()  # always the head
        session = self.session
        assert session is not None
        self.gateway.records.add(
            StatementRecord(
                lease_id=session.lease_id,
                person=session.person,
                target=session.target,
                role=session.role,
                kind=item.kind,
                sql=item.sql,
                params_policy=self.gateway.config.params,
                params=item.params,
                started=item.started,
                duration=time.monotonic() - item.t0,
                rows=item.rows,
                bytes_out=item.bytes_out,
                bytes_in=item.bytes_in,
                sqlstate=item.sqlstate,
                status=status,
                connection=self.number,
            )
        )


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
        self._mock_nonce = secrets.token_bytes(32)
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

    def _accept(self) -> _Side:
        connection = Connection(self, next(self._numbers))
        self._connections.add(connection)
        return connection.client

    @property
    def connections(self) -> int:
        return len(self._connections)

    def forget(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if connection.key is not None:
            self._keys.pop(connection.key, None)
        if connection.session is not None:
            self.live.detach(connection.session.lease_id, connection)

    def issue_key(self, connection: Connection) -> tuple[int, int]:
        while True:
            key = (secrets.randbelow(2**31 - 1) + 1, secrets.randbits(32) - 2**31)
            if key not in self._keys:
                self._keys[key] = connection
                return key

    def mock_verifier(self, user: str) -> ScramVerifier:
        """For a user name no session has: a stable salt, keys nobody knows."""
        salt = hashlib.sha256(self._mock_nonce + user.encode()).digest()[:16]
        return ScramVerifier(salt, secrets.token_bytes(32), secrets.token_bytes(32))

    async def cancel(self, pid: int, secret: int) -> None:
        """Forward a CancelRequest for a key we issued, over a fresh upstream connection."""
        connection = self._keys.get((pid, secret))
        if connection is None or connection.upstream_key is None or connection.session is None:
            return  # like the server: no answer either way
        up = connection.session.upstream
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(up.host, up.port, local_addr=self.config.source_address),
                self.config.connect_timeout,
            )
            if self.config.upstream_tls is not None:
                writer.write(_INT32.pack(8) + _INT32.pack(wire.SSL_REQUEST))
                if await reader.readexactly(1) != b"S":
                    writer.close()
                    return
                await writer.start_tls(self.config.upstream_tls, server_hostname=up.host)
            writer.write(wire.cancel_request(*connection.upstream_key))
            await writer.drain()
            await asyncio.wait_for(reader.read(1), self.config.connect_timeout)  # its close
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.warning("gateway: cancel not forwarded (%s)", type(exc).__name__)

    def end(self, lease_id: str, reason: str) -> int:
        return self.live.end(lease_id, reason)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
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
