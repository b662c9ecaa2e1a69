"""A bare asyncio Protocol byte pipe, for bench/gateway.py: the floor under any relay on the
same event loop (no framing, no login of its own, no records), to tell the gateway's own
cost from the runtime's.

    python bench/pipe_server.py UPSTREAM   # a port on 127.0.0.1, or a Unix socket's path

Prints ``port N`` once listening on 127.0.0.1; exits when stdin closes. uvloop when
installed, as the gateway command would. Each client connection gets one upstream
connection; bytes go through as they come, the client's held until the upstream is open.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import cast


class _Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.held: list[bytes] = []  # for the peer, before its transport exists

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        for data in self.held:
            self.transport.write(data)
        self.held.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        assert peer is not None
        if peer.transport is None:
            peer.held.append(data)
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Side):
    upstream = ""  # a port on 127.0.0.1, or a Unix socket's path

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        upstream = _Side()
        upstream.peer, self.peer = self, upstream
        loop = asyncio.get_running_loop()
        where = self.upstream
        loop.create_task(
            loop.create_unix_connection(lambda: upstream, where)
            if where.startswith("/")
            else loop.create_connection(lambda: upstream, "127.0.0.1", int(where))
        )


async def main() -> None:
    _Client.upstream = sys.argv[1]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Client, "127.0.0.1", 0)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    stdin_closed = asyncio.Event()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stdin_closed.set)),
        daemon=True,
    ).start()
    await stdin_closed.wait()
    server.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
