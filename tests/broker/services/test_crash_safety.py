"""Revocation guarantees on a real broker process and a real PostgreSQL.

The broker is SIGKILLed at each step of issuing and revoking (fail points), restarted,
and must leave no managed user behind without a live lease. A target that is down when a
session expires is retried until it is back. Users that exist without any lease are found
and dropped by the reconciler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from dbaccess.broker.failpoints import ENV as FAILPOINT
from dbaccess.broker.store import Lease, Store
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import PROVISIONER, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        tmp_path_factory.mktemp("crashy"),
        reaper_interval="1s",
        reconcile_interval="1s",
        creation_timeout="2s",
    )
    with stack:
        yield stack


@pytest.fixture(scope="module")
def alice(crashy: Stack) -> dict[str, str]:
    return {"Authorization": "Bearer " + device_tokens(crashy.idp, "alice")["id_token"]}


def eventually(check: Callable[[], bool], timeout: float = 20, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def leases(stack: Stack) -> list[Lease]:
    store = Store(stack.store_url)
    try:
        return store.sessions_of("alice", live_only=False)
    finally:
        store.close()


def orphans(stack: Stack) -> set[str]:
    """Managed users in the database with no live lease in the store."""
    live = {
        lease.db_user
        for lease in leases(stack)
        if lease.state in ("creating", "active", "revoking")
    }
    return set(stack.managed_users()) - live


def request_session(stack: Stack, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        stack.broker_url + "/v1/sessions",
        headers=headers,
        timeout=30,
        json={"target": "demo", "role": "readonly", "duration_seconds": 600},
    )


@pytest.mark.parametrize("point", ["issue.after_lease", "issue.after_create"])
def test_crash_while_issuing_leaves_nothing_behind(
    crashy: Stack, alice: dict[str, str], point: str
) -> None:
    known = {lease.id for lease in leases(crashy)}
    crashy.stop_broker()
    crashy.start_broker({FAILPOINT: point})
    with pytest.raises(httpx.HTTPError):
        request_session(crashy, alice)
    assert crashy.wait_broker_exit() == -9
    (lease,) = [lease for lease in leases(crashy) if lease.id not in known]
    assert lease.state == "creating"  # the intent was recorded before anything else
    assert (lease.db_user in crashy.managed_users()) == (point == "issue.after_create")

    crashy.start_broker()
    assert orphans(crashy) == set()
    eventually(lambda: lease.db_user not in crashy.managed_users(), what="the user to go")
    eventually(
        lambda: {x.id: x for x in leases(crashy)}[lease.id].state == "revoked",
        what="the lease to be closed",
    )
    assert {x.id: x for x in leases(crashy)}[lease.id].revoke_cause == "creation_interrupted"


@pytest.mark.parametrize("point", ["revoke.after_mark", "revoke.after_drop"])
def test_crash_while_revoking_finishes_after_restart(
    crashy: Stack, alice: dict[str, str], point: str
) -> None:
    session = request_session(crashy, alice).json()
    crashy.stop_broker()
    crashy.start_broker({FAILPOINT: point})
    with pytest.raises(httpx.HTTPError):
        httpx.delete(f"{crashy.broker_url}/v1/sessions/{session['id']}", headers=alice, timeout=30)
    assert crashy.wait_broker_exit() == -9
    crashy.start_broker()
    assert orphans(crashy) == set()
    # the dead replica's claim on the lease lapses first (CLAIM_TTL)
    eventually(
        lambda: session["db_user"] not in crashy.managed_users(), timeout=40, what="the drop"
    )
    eventually(
        lambda: {x.id: x for x in leases(crashy)}[session["id"]].state == "revoked",
        what="the lease to be closed",
    )


def test_target_down_at_expiry_is_retried_until_it_is_back(
    crashy: Stack, alice: dict[str, str]
) -> None:
    session = httpx.post(
        crashy.broker_url + "/v1/sessions",
        headers=alice,
        json={"target": "demo", "role": "readonly", "duration_seconds": 2},
    ).json()
    crashy.postgres.stop()
    store = Store(crashy.store_url)
    try:

        def failures() -> list[str]:
            return [
                r.event
                for r in store.audit_records(session["id"])
                if r.event == "session.revoke_failed"
            ]

        # each attempt is recorded, retried on a growing backoff (1, 2, 4, then 16 s)
        eventually(lambda: len(failures()) >= 4, timeout=45, what="four failed attempts")
        crashy.postgres.resume()
        back = time.monotonic()
        # dropped within seconds of its return, not when a backoff would have come round
        eventually(
            lambda: session["db_user"] not in crashy.managed_users(),
            timeout=15,
            what="the drop once the target is back",
        )
        assert time.monotonic() - back < 10
        eventually(
            lambda: store.get(session["id"]).state == "revoked",  # type: ignore[union-attr]
            what="the lease to be closed",
        )
        records = store.audit_records(session["id"])
        attempts = [r.detail for r in records if r.event == "session.revoke_failed"]
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert all("cannot connect to target 'demo'" in a["error"] for a in attempts)
        waits = [a["retry_at"] for a in attempts]
        assert waits == sorted(waits)
        assert records[-1].event == "session.revoked"
        assert records[-1].detail["attempts"] == len(attempts) + 1
    finally:
        store.close()


def test_reconciler_drops_managed_users_without_a_lease(crashy: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    with crashy.postgres.connect(
        "demo", user=PROVISIONER, password=crashy.provisioner_password
    ) as conn:
        verifier = conn.pgconn.encrypt_password(b"pw", b"dba_lost_1", b"scram-sha-256").decode()
        conn.execute(
            "SELECT dbaccess.create_user(%s, %s, %s, %s, 5, true, NULL, false)",
            ("dba_lost_1", verifier, datetime.now(UTC) + timedelta(hours=1), "dbaccess_readonly"),
        )
    assert "dba_lost_1" in crashy.managed_users()
    eventually(lambda: "dba_lost_1" not in crashy.managed_users(), what="the reconciler")
    store = Store(crashy.store_url)
    try:
        assert any(
            r.event == "reconcile.revoked" and r.detail["db_user"] == "dba_lost_1"
            for r in store.audit_records()
        )
    finally:
        store.close()
