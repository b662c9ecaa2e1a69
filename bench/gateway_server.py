"""The gateway in a process of its own, for bench/gateway.py (its CPU time is measured).

    python bench/gateway_server.py < settings.json

One JSON line on stdin (never argv: it holds the secrets): ``{"upstream": {"host", "port",
"database", "user", "password", "socket", "socket_owner"}, "user": gateway user name,
"secret": gateway secret}``, ``socket`` the database's Unix socket or null (host:port),
``socket_owner`` the uid serving it.
Serves one session from a MemoryDirectory with auditing on: every statement becomes a record,
handed to a BatchingWriter whose sink, with ``"store": URL``, writes them to that store as
the gateway process does, and counts them (without a store, only counts them).
Prints ``port N`` once listening; exits when stdin closes, printing
``records N``. uvloop when installed, as the gateway command would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbaccess.gateway.postgres.server import GatewayConfig, serve  # noqa: E402
from dbaccess.gateway.records import (  # noqa: E402
    BatchingWriter,
    RecordFields,
    StatementRecord,
    to_fields,
)
from dbaccess.gateway.sessions import (  # noqa: E402
    GatewaySession,
    MemoryDirectory,
    ScramVerifier,
    Upstream,
)
from dbaccess.gateway.store_sink import StoreSink  # noqa: E402


class CountingSink:
    """Counts the records; with ``store``, writes them there first, as the gateway
    process does (the field tuples, as its writer hands them to the store)."""

    def __init__(self, store: StoreSink | None = None) -> None:
        self.count = 0
        self.store = store

    def write(self, records: Sequence[StatementRecord]) -> None:
        self.write_fields([to_fields(r) for r in records])

    def write_fields(self, batch: Sequence[RecordFields]) -> None:
        if self.store is not None:
            self.store.write_fields(batch)
        self.count += len(batch)


async def main() -> None:
    settings = json.loads(sys.stdin.readline())
    up = settings["upstream"]
    directory = MemoryDirectory()
    directory.add(
        GatewaySession(
            lease_id="lease-bench",
            person="bench@example.com",
            target="bench",
            role="readwrite",
            user=settings["user"],
            verifier=ScramVerifier.for_secret(settings["secret"]),
            upstream=Upstream(
                up["host"],
                up["port"],
                up["database"],
                up["user"],
                up["password"],
                socket=up.get("socket"),
                socket_owner=up.get("socket_owner"),
            ),
        )
    )
    store_sink = None
    if settings.get("store"):
        from dbaccess.broker.store import Store

        store_sink = StoreSink(Store(settings["store"]), "bench")
    sink = CountingSink(store_sink)
    writer = BatchingWriter(sink)
    gateway = await serve(directory, writer, GatewayConfig(), live=directory.live)
    print(f"port {gateway.address[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    # a thread waits for stdin's end (the parent going away ends us too)
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stdin_closed.set)),
        daemon=True,
    ).start()
    await stdin_closed.wait()
    await gateway.close()
    writer.close()
    print(f"records {sink.count}", flush=True)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
