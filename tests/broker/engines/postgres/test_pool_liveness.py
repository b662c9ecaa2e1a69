"""The PostgreSQL engine's pool pings a connection only if it sat idle: one lent again
within ALIVE_BYPASS_SECONDS goes out unchecked (an extra round trip per session saved)."""

from __future__ import annotations

from typing import Any

import pytest

from dbaccess.broker.engines.postgres.engine import ALIVE_BYPASS_SECONDS, _LivenessCheck


class FakeConnection:
    autocommit = True

    def __init__(self, broken: bool = False) -> None:
        self.pings = 0
        self.broken = broken

    def execute(self, query: str) -> None:
        self.pings += 1
        if self.broken:
            raise OSError("server closed the connection")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_never_returned_is_pinged() -> None:
    conn: Any = FakeConnection()
    _LivenessCheck(Clock()).check(conn)
    assert conn.pings == 1


def test_a_connection_just_returned_is_lent_without_a_ping() -> None:
    clock = Clock()
    check, conn = _LivenessCheck(clock), FakeConnection()
    check.returned(conn)  # type: ignore[arg-type]
    clock.now += ALIVE_BYPASS_SECONDS / 2
    check.check(conn)  # type: ignore[arg-type]
    assert conn.pings == 0


def test_an_idle_connection_is_pinged_and_a_dead_one_refused() -> None:
    clock = Clock()
    check, alive, dead = _LivenessCheck(clock), FakeConnection(), FakeConnection(broken=True)
    for conn in (alive, dead):
        check.returned(conn)  # type: ignore[arg-type]
    clock.now += ALIVE_BYPASS_SECONDS + 0.1
    check.check(alive)  # type: ignore[arg-type]
    assert alive.pings == 1
    with pytest.raises(OSError):  # the pool then discards it and lends another
        check.check(dead)  # type: ignore[arg-type]
