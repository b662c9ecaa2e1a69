"""The MariaDB engine on a real server: revoke kills live connections, renew moves the
server-side expiry, and the EVENT drops expired accounts on the server's own clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pymysql
import pytest

from dbaccess.broker.engines import NewUser, engine_for
from dbaccess.broker.engines.mariadb.bootstrap import native_password_hash
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(stack: Stack, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    target = load_settings(stack.broker_config).targets["shop"]
    return engine_for("shop", target), target


def expiry_of(stack: Stack, user: str) -> datetime | None:
    conn = stack.mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT expires_at FROM dbaccess.managed_users WHERE username = %s", (user,)
            )
            row = cur.fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def test_revoke_kills_live_connections_and_renew_moves_expiry(engine, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    shop, target = engine
    expires = datetime.now(UTC) + timedelta(minutes=10)
    shop.create_user(NewUser("dba_live_1", "live-pw-123456", target.roles["readonly"], expires))
    session = stack.mariadb.connect(user="dba_live_1", password="live-pw-123456")
    with session.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM shop.orders")
        assert cur.fetchone()[0] >= 2  # type: ignore[index]

    later = expires + timedelta(minutes=20)
    shop.renew_user("dba_live_1", later)
    assert expiry_of(stack, "dba_live_1") == later.astimezone(UTC).replace(
        tzinfo=None, microsecond=0
    )
    shop.revoke_user("dba_live_1")
    with pytest.raises(pymysql.err.OperationalError), session.cursor() as cur:
        cur.execute("SELECT 1")
    session.close()
    assert "dba_live_1" not in shop.list_managed_users()
    with pytest.raises(pymysql.err.OperationalError):
        stack.mariadb.connect(user="dba_live_1", password="live-pw-123456")


def test_event_drops_expired_accounts_without_the_broker(stack: Stack) -> None:
    provisioner = stack.mariadb.connect(
        user="dbaccess_provisioner", password=stack.provisioner_password
    )
    soon = (datetime.now(UTC) + timedelta(seconds=2)).replace(tzinfo=None, microsecond=0)
    try:
        with provisioner.cursor() as cur:
            cur.execute(
                "CALL dbaccess.create_user(%s, %s, %s, %s, 5, NULL, FALSE)",
                ("dba_event_1", native_password_hash("event-pw-1"), "dbaccess_readonly", soon),
            )
    finally:
        provisioner.close()
    live = stack.mariadb.connect(user="dba_event_1", password="event-pw-1")
    deadline = time.monotonic() + 15
    while expiry_of(stack, "dba_event_1") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert expiry_of(stack, "dba_event_1") is None
    with pytest.raises(pymysql.err.OperationalError), live.cursor() as cur:
        cur.execute("SELECT 1")
    live.close()
