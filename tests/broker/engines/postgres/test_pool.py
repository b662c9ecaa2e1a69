"""The PostgreSQL engine's pool, wired up on a real server: a connection lent again right
after it came back is not pinged; one that sat idle longer is."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg_pool import ConnectionPool

from dbaccess.broker.engines.postgres import engine as postgres
from dbaccess.broker.engines.postgres.engine import PostgresEngine
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresEngine]:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    opened = PostgresEngine("demo", load_settings(stack.broker_config).targets["demo"])
    yield opened
    opened.close()


def test_only_idle_connections_are_pinged(
    engine: PostgresEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    real = ConnectionPool.check_connection

    def counted(conn: object) -> None:
        pings.append(conn)
        real(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counted))
    engine.list_managed_users()  # a new connection: never returned, so pinged
    assert len(pings) == 1
    for _ in range(5):
        engine.list_managed_users()
    # Every connection's first lending is pinged (it was never returned); the pool may open
    # more in the background. A connection pinged twice was pinged when lent again at once.
    assert len({id(conn) for conn in pings}) == len(pings)
    assert len(pings) < 6  # at least one call went without a ping
    before = len(pings)
    monkeypatch.setattr(postgres, "ALIVE_BYPASS_SECONDS", 0.0)
    engine.list_managed_users()  # "idle" beyond the (now zero) window: pinged
    assert len(pings) == before + 1
