"""The compiled reader of the gateway's most frequent chunks (_fastwire.c, built by
setup.py where a C compiler is at hand), or None for each name: the Python path then
does the same work (wire.ServerScanner, server.Connection), as it does for every chunk the
compiled one does not recognise. ``Open`` is server._Open as a C struct, and ``Relay`` a
connection's two ``data_received`` for those chunks (the Python methods for the rest).
``DBACCESS_GATEWAY_PYTHON=1`` in the gateway's environment leaves it unused (to rule it
out, or to compare)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

client_queries: Callable[[bytes], list[str] | None] | None = None
simple_answer: Callable[[bytes], tuple[int | None, int, bytes] | None] | None = None
Open: Any = None
Relay: Any = None

if os.environ.get("DBACCESS_GATEWAY_PYTHON", "") in ("", "0"):
    try:
        from dbaccess.gateway.postgres import _fastwire  # type: ignore[attr-defined]
    except ImportError:  # not built here: the Python path alone
        pass
    else:
        client_queries = _fastwire.client_queries
        simple_answer = _fastwire.simple_answer
        Open = _fastwire.Open
        Relay = _fastwire.Relay

BUILT = client_queries is not None
