"""When each request reached the broker: a monotonic time in the ASGI scope, stamped
before anything else runs (the routes' dependencies, a wait for a worker thread), so an
issuance can tell how long its caller has been waiting (services/target_guard.py)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY = "dbaccess.received_at"


class StampArrival:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[KEY] = time.monotonic()
        await self.app(scope, receive, send)


def received_at(scope: Scope) -> float | None:
    value = scope.get(KEY)
    return float(value) if value is not None else None
