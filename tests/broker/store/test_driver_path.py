"""The issuance path writes leases and audit records through the driver's cursor (not
SQLAlchemy): what it writes must read back, compare in SQL and verify exactly as if
SQLAlchemy had written it — on SQLite and on a PostgreSQL store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dbaccess.broker.store import Conflict, Lease, Store
from dbaccess.broker.store.audit_chain import raw_records, verify
from dbaccess.sandbox.stack import Stack


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        stack: Stack = request.getfixturevalue("stack")
        pg = stack.postgres
        database = f"store_{uuid.uuid4().hex[:8]}"
        with pg.connect() as admin:
            admin.execute(f'CREATE DATABASE "{database}"')
        url = (
            f"postgresql+psycopg://{pg.admin_user}:{pg.admin_password}@127.0.0.1:"
            f"{pg.port}/{database}"
        )
    opened = Store(url)
    yield opened
    opened.close()


def _open(store: Store, now: datetime, expires_at: datetime, **extra: object) -> Lease:
    return store.open_lease(
        now=now, subject="alice", email="alice@example.com", target="demo", role="readonly",
        engine="postgres", db_user=f"dba_alice_{uuid.uuid4().hex[:10]}", rule="dev",
        reason="INC-1 look", ticket="INC-1", expires_at=expires_at, source="127.0.0.1",
        user_agent="dbaccess/test", **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_lease_reads_back_as_it_was_written(store: Store) -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)
    lease = _open(store, now, now + timedelta(hours=1))
    active = store.activate(lease, now)
    assert active.state == "active"
    assert store.get(lease.id) == active
    read = store.get(lease.id)
    assert read is not None and read.created_at == now and read.created_at.tzinfo is UTC


@pytest.mark.parametrize("microsecond", [0, 999999])
def test_driver_written_times_compare_in_sql(store: Store, microsecond: int) -> None:
    # Text comparison on SQLite: a time written in another form than SQLAlchemy's would
    # sort wrongly against the bound "now" (e.g. "12:00:00" vs "12:00:00.000000").
    expires = datetime(2026, 12, 1, 12, 0, 0, microsecond, tzinfo=UTC)
    lease = store.activate(_open(store, expires - timedelta(hours=1), expires), expires)
    stale = expires - timedelta(days=1)
    assert lease.id not in {d.id for d in store.due(expires - timedelta(microseconds=1), stale)}
    assert lease.id in {d.id for d in store.due(expires, stale)}
    # and from below: the "granted" record was written at exactly `expires`
    granted = [r.event for r in store.audit_records(lease.id, since=expires)]
    assert granted == ["session.granted"]
    later = expires + timedelta(microseconds=1)
    assert store.audit_records(lease.id, since=later) == []


def test_the_audit_chain_verifies_across_both_paths(store: Store) -> None:
    now = datetime.now(UTC)
    for _ in range(3):
        lease = store.activate(_open(store, now, now + timedelta(hours=1)), now)
        store.begin_revoke(lease.id, now, "user")  # written through SQLAlchemy
    result = verify(raw_records(store))
    assert result.ok and result.records == 9
    events = [r.event for r in store.audit_records()]
    assert events.count("session.requested") == events.count("session.granted") == 3


def test_a_lease_revoked_while_being_created_is_not_activated(store: Store) -> None:
    now = datetime.now(UTC)
    lease = _open(store, now, now + timedelta(hours=1), kind="breakglass", incident="INC-7")
    store.begin_revoke(lease.id, now, "creation_timeout")
    after = store.activate(lease, now)
    assert after.state == "revoking" and after.revoke_cause == "creation_timeout"
    assert "breakglass.granted" not in [r.event for r in store.audit_records()]


def test_times_come_back_in_utc_whatever_zone_they_were_given_in(store: Store) -> None:
    now = datetime(2026, 12, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    active = store.activate(_open(store, now, now + timedelta(hours=1)), now)
    read = store.get(active.id)
    assert read is not None
    for lease in (active, read):
        assert lease.created_at.tzinfo is UTC and lease.created_at.hour == 12
        assert lease.expires_at.tzinfo is UTC and lease.expires_at.hour == 13


def test_a_naive_time_is_refused_and_nothing_is_written(store: Store) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        _open(store, datetime(2026, 12, 1, 12, 0), datetime(2026, 12, 1, 13, 0))
    assert store.sessions_of("alice", live_only=False) == []
    assert store.audit_records() == []


def test_a_failing_statement_rolls_back_the_whole_write_and_the_next_one_works(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    broken = replace(store._sql, audit_insert="INSERT INTO no_such_table (x) VALUES (1)")
    monkeypatch.setattr(store, "_sql", broken)
    with pytest.raises(Exception, match="no_such_table"):
        _open(store, now, now + timedelta(hours=1))
    monkeypatch.undo()
    assert store.sessions_of("alice", live_only=False) == []  # the lease row went too
    lease = store.activate(_open(store, now, now + timedelta(hours=1)), now)
    assert store.get(lease.id) == lease
    assert verify(raw_records(store)).ok and verify(raw_records(store)).records == 2


def test_a_renewal_after_a_revocation_began_changes_and_records_nothing(store: Store) -> None:
    now = datetime.now(UTC)
    lease = store.activate(_open(store, now, now + timedelta(hours=1)), now)
    store.begin_revoke(lease.id, now, "revoked")
    with pytest.raises(Conflict, match="no longer active"):
        store.renew(lease.id, now, now + timedelta(hours=2), "alice")
    after = store.get(lease.id)
    assert after is not None and after.expires_at == lease.expires_at
    assert "session.renewed" not in [r.event for r in store.audit_records()]
