"""Two broker replicas on one PostgreSQL store never revoke a lease twice, never miss one,
and keep a single, unbroken audit chain."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from dbaccess.broker.store import Store, record_hash
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.processes import free_port, wait_until
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration
SESSIONS = 24


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    workdir = tmp_path_factory.mktemp("replicas")
    with Stack(workdir, store_on_postgres=True, reconcile_interval="2s") as stack:
        port = free_port()
        second = stack.spawn_broker(port, workdir / "replica-2.log")
        url = f"http://127.0.0.1:{port}"
        try:

            def healthy() -> bool:
                try:
                    return httpx.get(url + "/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, timeout=30, what="the second replica")
            yield stack, url
        finally:
            second.terminate()
            second.wait(timeout=10)


def revoked_total(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(
        float(v) for v in re.findall(r"^dbaccess_sessions_revoked_total\{.*\} (\S+)$", text, re.M)
    )


def test_each_lease_is_revoked_exactly_once(replicas: tuple[Stack, str]) -> None:
    stack, second = replicas
    headers = {"Authorization": "Bearer " + device_tokens(stack.idp, "alice")["id_token"]}
    created = []
    for i in range(SESSIONS):
        url = stack.broker_url if i % 2 else second
        answer = httpx.post(
            url + "/v1/sessions",
            headers=headers,
            timeout=30,
            json={"target": "demo" if i % 3 else "shop", "role": "readonly", "duration_seconds": 2},
        )
        assert answer.status_code == 201, answer.text
        created.append(answer.json())
    wait_until(
        lambda: not set(stack.managed_users()) & {s["db_user"] for s in created},
        timeout=30,
        what="every session user to be dropped",
    )
    time.sleep(1.5)  # a replica that revoked twice would have done so by now

    store = Store(stack.store_url, migrate=False)
    try:
        records = store.audit_records()
        leases = {s["id"]: store.get(s["id"]) for s in created}
    finally:
        store.close()
    assert all(lease is not None and lease.state == "revoked" for lease in leases.values())
    per_lease = Counter((r.lease_id, r.event) for r in records if r.lease_id in leases)
    for lease_id in leases:
        assert per_lease[(lease_id, "session.revoke_requested")] == 1
        assert per_lease[(lease_id, "session.revoked")] == 1
    assert revoked_total(stack.broker_url) + revoked_total(second) == SESSIONS
    # one chain, in order, with no gap or fork
    for before, after in zip(records, records[1:], strict=False):
        assert after.prev_hash == before.hash
    import json

    for record in records:
        detail = json.dumps(record.detail, sort_keys=True, default=str)
        assert record.hash == record_hash(
            record.prev_hash, record.at, record.event, record.subject, record.lease_id, detail
        )


def test_concurrent_asks_at_both_replicas_open_one_approval_request(
    replicas: tuple[Stack, str],
) -> None:
    """A retry storm (or a person asking twice) spread over two replicas: the check for an
    open request and the insert run under the store's advisory lock, so one request."""
    from concurrent.futures import ThreadPoolExecutor

    stack, second = replicas
    headers = {"Authorization": "Bearer " + device_tokens(stack.idp, "alice")["id_token"]}
    body = {"target": "demo", "role": "readwrite", "reason": "replica race"}

    def ask(i: int) -> httpx.Response:
        url = stack.broker_url if i % 2 else second
        return httpx.post(url + "/v1/sessions", headers=headers, json=body, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    (rid,) = {a.json()["id"] for a in answers}
    store = Store(stack.store_url, migrate=False)
    try:
        mine = [
            r
            for r in store.requests()
            if r.subject == "alice"
            and r.target == "demo"
            and r.role == "readwrite"
            and r.state == "pending"
        ]
        created = [
            r for r in store.audit_records(event="request.created") if r.detail["request_id"] == rid
        ]
    finally:
        store.close()
    assert [r.id for r in mine] == [rid] and len(created) == 1
    withdrawn = httpx.post(f"{second}/v1/requests/{rid[:8]}/withdraw", headers=headers, timeout=30)
    assert withdrawn.json()["state"] == "withdrawn"
