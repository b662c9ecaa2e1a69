"""The compiled reader of the gateway's most frequent chunks (_fastwire.c, built by
setup.py where a C compiler is at hand), or None for each name: the Python path then
does the same work (wire.ServerScanner, server.Connection), as it does for every chunk the
compiled one does not recognise. ``Open`` is server._Open as a C struct, and ``Relay`` a
connection's two ``data_received`` for those chunks (the Python methods for the rest).
``ConnState``, ``ScanState`` and ``SideState`` are the bases of server.Connection,
wire.ServerScanner and server._Side: the attributes the relay reads on every chunk, as C
struct members (without the compiled module, the plain classes below: the same names, as
instance attributes or slots).
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


class ConnState:
    """server.Connection's attributes the relay reads: idle_timer, guarding, skipping,
    limiting, portals, closed, status (set by Connection itself)."""


class ScanState:
    """wire.ServerScanner's attributes the relay reads and sets."""

    __slots__ = ("_skip", "_header", "_bytes", "_rows", "_base", "limited", "end")


class SideState:
    """server._Side's attributes the relay reads: transport, buf."""


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
        ConnState = _fastwire.ConnState  # type: ignore[misc]
        ScanState = _fastwire.ScanState  # type: ignore[misc]
        SideState = _fastwire.SideState  # type: ignore[misc]

BUILT = client_queries is not None
