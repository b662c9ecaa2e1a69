"""The tunnel's PostgreSQL side: a GUI client logs in to the tunnel with the local user name
and secret; the tunnel logs in to the gateway with the session's user and secret over TLS
(verify-full against the session's CA), then relays bytes both ways, untouched.

The framing helpers are the gateway's own (``dbaccess.gateway.postgres.wire``: standard
library only, no contract keeps the client from them), and SCRAM-SHA-256 is scramp's on
both sides, as in the gateway. The loopback hop answers SSLRequest (and GSSENCRequest) 'N':
the bytes never leave the machine, anyone who can read loopback traffic can already read
the user's memory, and a certificate for 127.0.0.1 would be one more CA for every GUI to
trust. GUIs are told ``sslmode=disable``; ``prefer`` works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import scramp

from dbaccess.client.tunnel.keeper import Held, SessionKeeper
from dbaccess.client.tunnel.peer import NOT_FOUND, peer_uid
from dbaccess.errors import DbaccessError
from dbaccess.gateway.postgres import wire
from dbaccess.gateway.postgres.scram_login import LoginRefused, ScramLogin

SCRAM = scramp.ScramMechanism("SCRAM-SHA-256")
MAX_HANDSHAKE_MESSAGE = 64 * 1024  # authentication messages are a few hundred bytes
CHUNK = 64 * 1024
_INT32 = struct.Struct("!i")
_LENGTH = struct.Struct("!I")


class Refused(Exception):
    """Why a GUI connection is turned away: a FATAL ErrorResponse with this SQLSTATE."""

    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate
        self.text = text


class SessionGone(Exception):
    """The gateway does not know the session's user (revoked, or expired): get another."""


@dataclass(frozen=True)
class LocalLogin:
    """What a GUI client must present: the user name, the database, the local secret's
    SCRAM verifier (scramp's auth info; the secret itself is not kept here)."""

    user: str
    database: str
    auth_info: tuple[bytes, bytes, bytes, int] = field(repr=False)

    @classmethod
    def for_secret(cls, user: str, database: str, secret: str) -> LocalLogin:
        return cls(user, database, SCRAM.make_auth_info(secret))


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 30.0  # a GUI's own start-up, up to its password
    connect: float = 10.0  # TCP and TLS to the gateway


class Tunnel:
    """Serves GUI connections: ``handle`` is ``asyncio.start_server``'s callback."""

    def __init__(
        self,
        login: LocalLogin,
        keeper: SessionKeeper,
        *,
        warn: Callable[[str], None] = lambda _text: None,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self.login = login
        self.keeper = keeper
        self.warn = warn
        self.timeouts = timeouts
        self.uid = os.geteuid()
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        except Refused as refused:
            writer.write(wire.error_response(refused.sqlstate, refused.text))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except TimeoutError:
            writer.write(wire.error_response("08006", "the start-up did not finish in time"))
        except (wire.ProtocolError, struct.error, UnicodeDecodeError):
            writer.write(
                wire.error_response("08P01", "invalid start-up of the PostgreSQL protocol")
            )
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client (or the gateway) went away
        except Exception as exc:  # the type only: a message could quote a secret
            self.warn(f"a connection failed: {type(exc).__name__}")
            writer.write(wire.error_response("XX000", "the tunnel failed to set up the connection"))
        finally:
            writer.close()
            if task is not None:
                self.tasks.discard(task)

    async def aclose(self) -> None:
        """End every connection (the tunnel stops) and let their sockets close."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # the transports' close callbacks (TLS: close_notify)

    # -- the GUI's side ------------------------------------------------------------------

    def _same_user(self, writer: asyncio.StreamWriter) -> None:
        """Before reading a byte: the connection comes from a process of this very user
        (peer.py), else it is turned away whatever it would present."""
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else NOT_FOUND
        if uid is not None and uid != self.uid:
            if uid != NOT_FOUND:
                self.warn(f"refused a connection from another local user (uid {uid})")
            raise Refused(
                "28000", f"this tunnel serves only the local user who started it (uid {self.uid})"
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._same_user(writer)
        params = await asyncio.wait_for(self._startup(reader, writer), self.timeouts.handshake)
        if params is None:
            return  # a CancelRequest, forwarded
        await asyncio.wait_for(self._authenticate(reader, writer), self.timeouts.handshake)
        up_reader, up_writer = await self._upstream(params)
        try:
            writer.write(wire.authentication(0))  # AuthenticationOk: the gateway said yes too
            await _relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, str] | None:
        while True:
            packet = await _read_startup(reader)
            code = wire.int32(packet, 4)
            if code in (wire.SSL_REQUEST, wire.GSSENC_REQUEST):
                writer.write(b"N")  # loopback: see the module's docstring
                continue
            if code == wire.CANCEL_REQUEST and len(packet) == 16:
                await self._forward_cancel(packet)
                return None
            if code >> 16 != 3:
                raise Refused("08P01", "unsupported frontend protocol")
            params = wire.startup_params(packet[8:])
            unknown = [name for name in params if name.startswith("_pq_.")]
            if code & 0xFFFF or unknown:  # 3.2 and protocol options: we (and the gateway) speak 3.0
                writer.write(wire.negotiate_protocol_version(0, unknown))
            break
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            raise Refused("28000", "replication connections are not allowed through the tunnel")
        user = params.get("user", "")
        if user != self.login.user:
            raise Refused("28000", f'this tunnel\'s user is "{self.login.user}"')
        database = params.get("database") or user
        if database != self.login.database:
            raise Refused("3D000", f'this tunnel is for database "{self.login.database}"')
        return {
            name: value
            for name, value in params.items()
            if name not in ("user", "database", "replication") and not name.startswith("_pq_.")
        }

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """SCRAM-SHA-256 against the local secret's verifier."""
        writer.write(wire.authentication(10, b"SCRAM-SHA-256\0\0"))
        server = SCRAM.make_server(lambda _name: self.login.auth_info)
        try:
            kind, body = await _read_message(reader)
            if kind != ord("p"):
                raise wire.ProtocolError("expected a SASLInitialResponse")
            mechanism, offset = wire.read_cstring(body, 0)
            if mechanism != b"SCRAM-SHA-256":
                raise scramp.ScramException("unsupported mechanism")
            length = wire.int32(body, offset)
            first = body[offset + 4 : offset + 4 + length].decode()
            # libpq sends an empty SCRAM user name (the startup packet has it), which
            # scramp refuses: parse with a placeholder, sign with what the client sent
            # (as the gateway does).
            gs2, sep, bare = first.partition(",,")
            placeholder = bare.replace("n=,", "n=*,", 1) if bare.startswith("n=,") else bare
            server.set_client_first(gs2 + sep + placeholder)
            server.client_first_bare = bare
            writer.write(wire.authentication(11, server.get_server_first().encode()))
            kind, body = await _read_message(reader)
            if kind != ord("p"):
                raise wire.ProtocolError("expected a SASLResponse")
            server.set_client_final(body.decode())
            final = server.get_server_final()
        except (scramp.ScramException, wire.ProtocolError, struct.error, UnicodeDecodeError):
            raise Refused(
                "28P01", f'password authentication failed for user "{self.login.user}"'
            ) from None
        writer.write(wire.authentication(12, final.encode()))

    # -- the gateway's side --------------------------------------------------------------

    async def _upstream(
        self, params: dict[str, str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Logged in at the gateway on the current session; on a session the gateway no
        longer knows, once more on a fresh one."""
        for attempt in (1, 2):
            try:
                held = await self.keeper.session()
            except DbaccessError as exc:
                self.warn(f"no session for a new connection: {exc.message}")
                raise Refused("08004", f"dbaccess tunnel has no session: {exc.message}") from None
            try:
                return await self._login_upstream(held, params)
            except SessionGone:
                self.keeper.ended(held)
                if attempt == 2:
                    raise Refused(
                        "08004", "the gateway refused the tunnel's fresh session"
                    ) from None
        raise AssertionError("unreachable")

    async def _open_gateway(self, held: Held) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP, SSLRequest, then TLS verified against the session's CA and the gateway's
        host name (libpq's verify-full)."""
        granted = held.granted
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(granted.host, granted.port), self.timeouts.connect
            )
        except (OSError, TimeoutError) as exc:
            raise Refused(
                "08006", f"the tunnel cannot reach the gateway at {granted.host}:{granted.port}"
            ) from exc
        try:
            writer.write(_INT32.pack(8) + _INT32.pack(wire.SSL_REQUEST))
            if await reader.readexactly(1) != b"S":
                raise Refused("08006", "the gateway does not offer TLS")
            context = ssl.create_default_context(cadata=granted.ca_certificate or "")
            await asyncio.wait_for(
                writer.start_tls(context, server_hostname=granted.host), self.timeouts.connect
            )
        except ssl.SSLCertVerificationError as exc:
            writer.close()
            raise Refused(
                "08006", f"the gateway's certificate does not verify: {exc.verify_message}"
            ) from None
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _login_upstream(
        self, held: Held, params: dict[str, str]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        granted = held.granted
        reader, writer = await self._open_gateway(held)
        try:
            writer.write(
                wire.startup_message(
                    {"user": granted.db_user, "database": granted.database, **params}
                )
            )
            login = ScramLogin(granted.db_user, granted.password.get_secret_value())
            while True:
                kind, body = await _read_message(reader)
                if kind == ord("E"):
                    fields = wire.error_fields(body)
                    if fields.get("C") == "28P01":  # the gateway does not know the session
                        raise SessionGone
                    raise Refused(
                        fields.get("C", "08006"), f"the gateway refused: {fields.get('M', '')}"
                    )
                if kind != ord("R"):
                    raise Refused("08P01", "unexpected message from the gateway during login")
                # never the secret in clear or md5 to anyone, and the gateway proves it
                # knew us before its OK counts
                try:
                    reply = login.answer(body)
                except (LoginRefused, wire.ProtocolError) as exc:
                    raise Refused("08P01", f"the gateway's login: {exc}") from None
                if reply is None:
                    return reader, writer
                if reply:
                    writer.write(reply)
        except scramp.ScramException:
            writer.close()
            raise Refused("08006", "the gateway's SCRAM answer did not verify") from None
        except BaseException:
            writer.close()
            raise

    async def _forward_cancel(self, packet: bytes) -> None:
        """A CancelRequest carries the gateway's key for the connection (the tunnel passed
        its BackendKeyData on): send it to the gateway over a fresh TLS connection."""
        held = self.keeper.current
        if held is None:
            return
        with contextlib.suppress(Refused, OSError, TimeoutError, asyncio.IncompleteReadError):
            reader, writer = await self._open_gateway(held)
            try:
                writer.write(packet)
                await writer.drain()
                # as libpq does: wait for the gateway to close (closing first would end
                # its connection before it forwarded the cancel)
                await asyncio.wait_for(reader.read(1), self.timeouts.connect)
            finally:
                writer.close()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Bytes both ways until either side ends; drain() keeps a slow reader from making
    the tunnel buffer without bound."""
    pumps = {
        asyncio.create_task(_pump(reader, up_writer)),
        asyncio.create_task(_pump(up_reader, writer)),
    }
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        # what was written is still delivered: close() flushes before it closes
        sink.close()


async def _read_startup(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    length = wire.startup_length(head)
    assert length is not None
    return head + await reader.readexactly(length - 4)


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(5)
    length = int(_LENGTH.unpack_from(head, 1)[0])
    if length < 4 or length > MAX_HANDSHAKE_MESSAGE:
        raise wire.ProtocolError("invalid message length")
    return head[0], await reader.readexactly(length - 4)
