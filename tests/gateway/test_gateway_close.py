"""Stopping a gateway leaves no socket open: what its connections and its background work
(a cancel after a cut answer) opened is closed before ``close`` returns, even when the
peer does not play along. A socket left open would stay so until the process ends (a
stopped loop never closes it), and shows as a ResourceWarning."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from dbaccess.gateway.postgres import wire
from dbaccess.gateway.postgres.server import CLOSE_GRACE, Connection, GatewayConfig, serve
from dbaccess.gateway.records import BatchingWriter, MemorySink
from dbaccess.gateway.sessions import MemoryDirectory, Upstream
from dbaccess.sandbox.tls import make_certificates


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the peer closed: read() returns what came (the cancel) at the end."""
    try:
        await asyncio.wait_for(reader.read(), seconds)
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_close_ends_a_cancel_in_flight_and_closes_its_socket() -> None:
    async def scenario() -> tuple[bool, bool]:
        accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
        ours: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ours.append(w)
            await accepted.put(reader)  # a database that never answers the cancel

        database = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = database.sockets[0].getsockname()[1]
        writer = BatchingWriter(MemorySink())
        gateway = await serve(MemoryDirectory(), writer, GatewayConfig(connect_timeout=30))
        upstream = Upstream("127.0.0.1", port, "postgres", "u", "not-used")
        connection = SimpleNamespace(
            upstream_key=(1, 2), session=SimpleNamespace(upstream=upstream)
        )
        gateway.in_background(gateway.forward_cancel(cast(Connection, connection)))
        reader = await asyncio.wait_for(accepted.get(), 5)
        started = time.monotonic()
        await gateway.close()
        closed_fast = time.monotonic() - started < CLOSE_GRACE + 1
        eof = await _eof_within(reader, 2)  # the gateway's side of it is closed
        for w in ours:
            w.close()
            await w.wait_closed()
        database.close()
        await database.wait_closed()
        writer.close()
        return closed_fast, eof

    closed_fast, eof = asyncio.run(scenario())
    assert closed_fast
    assert eof, "the cancel's connection stayed open after the gateway closed"


def test_close_aborts_a_tls_client_that_does_not_answer_close_notify(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs.cert, certs.key)
    client_tls = ssl.create_default_context(cafile=str(certs.ca))

    async def scenario() -> tuple[float, bytes | None]:
        writer = BatchingWriter(MemorySink())
        gateway = await serve(MemoryDirectory(), writer, GatewayConfig(tls=server_tls))
        raw = socket.create_connection(gateway.address)
        raw.sendall(SSL_REQUEST)
        # the client's blocking calls in a thread: the gateway answers on this loop
        assert await asyncio.to_thread(raw.recv, 1) == b"S"
        tls = await asyncio.to_thread(client_tls.wrap_socket, raw, server_hostname="127.0.0.1")
        await asyncio.sleep(0.1)
        # then the client goes silent: it never answers the gateway's close_notify
        started = time.monotonic()
        await gateway.close()
        took = time.monotonic() - started
        # below TLS, on a copy of the socket: whatever the gateway sent last (its
        # close_notify), then the end of the stream once its socket is closed; a timeout
        # means the gateway's socket was left open
        probe = socket.socket(fileno=os.dup(tls.fileno()))
        probe.settimeout(3)
        last: bytes | None = None
        try:
            while chunk := await asyncio.to_thread(probe.recv, 4096):
                last = chunk
            last = b""
        except TimeoutError:
            last = None
        except ConnectionError:
            last = b""
        probe.close()
        tls.close()
        writer.close()
        return took, last

    took, end = asyncio.run(scenario())
    assert end == b"", "the gateway's socket was still open after close()"
    assert took < CLOSE_GRACE + 1


SSL_REQUEST = (8).to_bytes(4, "big") + wire.SSL_REQUEST.to_bytes(4, "big")
