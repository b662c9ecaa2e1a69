"""A store that cannot be reached does not flood the broker's log (issue 12, general
quality): the reaper's threads and the webhook sender try again every pass, and each says
once that it fails (what, the error, how often it retries), stays quiet while it lasts, and
says once that it recovered and after how long. Tracebacks only at debug level; no password
or store URL in any line. The store is a PostgreSQL server of its own, stopped for the
test and started again on its data; the targets are the suite's."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.services.revocation import Revocation
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from dbaccess.sandbox.postgres import PostgresServer
from dbaccess.sandbox.processes import wait_until
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration

INTERVAL = 0.25  # the reaper's; the webhook sender looks at the outbox every second
OUTAGE = 6.0  # seconds the store is down: ~24 reaper passes, ~6 of the sender

LOOPS = (
    "revoking the leases of target demo",
    "revoking the leases of target shop",
    "the reaper's pass (requests' expiry, leases of removed targets)",
    "webhook delivery (reading and settling the outbox)",
)


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("store-pg"))
    server.start()
    try:
        with server.connect() as admin:
            admin.execute("CREATE DATABASE broker_store")
        yield server
    finally:
        server.stop()


def store_url(server: PostgresServer) -> str:
    return (
        f"postgresql+psycopg://{server.admin_user}:{server.admin_password}@127.0.0.1:"
        f"{server.port}/broker_store"
    )


def reconcile_reading_only(self: Revocation, target: str | None = None) -> int:
    """The targets are the suite's, shared: this broker's reconciler, with a store of its
    own, would drop the users of the suite's broker. It reads the store, and no more."""
    self.ctx.store.live_users(target or "demo")
    return 0


def test_a_store_outage_is_one_line_per_loop_when_it_starts_and_one_when_it_ends(
    stack: Stack,
    store_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    monkeypatch.setattr(Revocation, "reconcile", reconcile_reading_only)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"reaper_interval": timedelta(seconds=INTERVAL)}
            )
        }
    )
    assert settings.notify.webhooks  # so the sender runs too
    store = Store(store_url(store_server))
    app = create_app(settings, store=store)
    caplog.set_level(logging.DEBUG, logger="dbaccess")
    with TestClient(app) as api:
        wait_until(
            lambda: api.get("/healthz").status_code == 200, timeout=30, what="a healthy broker"
        )
        time.sleep(1)  # every loop has passed at least once
        caplog.clear()
        store_server.stop()
        time.sleep(OUTAGE)
        assert api.get("/healthz").status_code == 503
        during = list(caplog.records)
        store_server.resume()

        def recovered() -> bool:
            done = {
                r.getMessage().split(" recovered after")[0]
                for r in caplog.records
                if " recovered after " in r.getMessage()
            }
            return all(any(d.startswith(loop) for d in done) for loop in LOOPS)

        wait_until(recovered, timeout=30, what="every loop to say it recovered")
        wait_until(
            lambda: api.get("/healthz").status_code == 200,
            timeout=30,
            what="/healthz to be ok again",
        )
        time.sleep(1)  # what a flood would log after the recovery is in, too
        records = list(caplog.records)
    store.close()

    loud = [r for r in records if r.levelno >= logging.WARNING]
    for loop in LOOPS:
        failed = [r for r in loud if r.getMessage().startswith(loop + " failed")]
        assert len(failed) == 1, (loop, [r.getMessage() for r in failed])
        line = failed[0].getMessage()
        assert "StoreUnavailable" in line and "retrying every" in line, line
        ended = [
            r
            for r in records
            if r.getMessage().startswith(loop) and " recovered after " in r.getMessage()
        ]
        assert len(ended) == 1 and ended[0].levelno == logging.INFO, ended
        assert ended[0].failed_passes >= 3, ended[0].getMessage()  # type: ignore[attr-defined]
    # The store's own lines: the cause once (psycopg's reason: host and port, no password),
    # not once a failing call; and once that it takes writes again.
    store_lines = [r for r in loud if r.name == "dbaccess.broker.store"]
    assert {r.getMessage().split(" (")[0] for r in store_lines} <= {
        "cannot connect to the store",
        "a store write failed",
    }, store_lines
    assert any(str(store_server.port) in r.error for r in store_lines)  # type: ignore[attr-defined]
    assert sum("takes writes again" in r.getMessage() for r in records) == 1
    # Nothing else logs a line a pass: the warnings do not grow with the outage's length.
    repeated = Counter(r.getMessage() for r in loud if r in during)
    assert max(repeated.values()) == 1, repeated.most_common(3)
    # Tracebacks at debug level only, and there they are (for whoever turns it on).
    assert not [r for r in loud if r.exc_info], [r.getMessage() for r in loud if r.exc_info]
    assert any(r.exc_info for r in records if r.levelno == logging.DEBUG)
    formatter = logging.Formatter()
    for record in records:
        text = formatter.format(record) + repr(vars(record))
        assert store_server.admin_password not in text
        assert store_url(store_server) not in text
