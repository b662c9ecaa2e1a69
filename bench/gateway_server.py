"""The gateway in a process of its own, for bench/gateway.py (its CPU time is measured).

    python bench/gateway_server.py < settings.json

One JSON line on stdin (never argv: it holds the secrets): ``{"upstream": {"host", "port",
"database", "user", "password"}, "user": gateway user name, "secret": gateway secret}``.
Serves one session from a MemoryDirectory with auditing on: every statement becomes a record,
handed to a BatchingWriter whose sink counts them (the store's write cost is not in the
figure), or, with ``"store": URL``, writes them to that store as the gateway process does.
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
from dbaccess.gateway.records import BatchingWriter, StatementRecord  # noqa: E402
from dbaccess.gateway.sessions import (  # noqa: E402
    GatewaySession,
    MemoryDirectory,
    ScramVerifier,
    Upstream,
)


class CountingSink:
    def __init__(self) -> None:
        self.count = 0

    def write(self, records: Sequence[StatementRecord]) -> None:
        self.count += len(records)


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
            upstream=Upstream(up["host"], up["port"], up["database"], up["user"], up["password"]),
        )
    )
    sink = CountingSink()
    if settings.get("store"):
        from dbaccess.broker.store import Store
        from dbaccess.gateway.store_sink import StoreSink

        store_sink = StoreSink(Store(settings["store"]), "bench")

        count = sink.write

        def both(records: Sequence[StatementRecord]) -> None:
            store_sink.write(records)
            count(records)

        sink.write = both  # type: ignore[method-assign]
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
