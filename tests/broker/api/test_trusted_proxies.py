"""The audited source address: X-Forwarded-For counts only from a configured proxy.

Anyone can send the header; uvicorn alone believes it from 127.0.0.1, so a person on the
broker's host could have written any address into the audit trail."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.processes import end_process, free_port, wait_until
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

FORGED = "203.0.113.9"


def audited_source(stack: Stack, url: str, token: str) -> str:
    auth = {"Authorization": f"Bearer {token}", "X-Forwarded-For": FORGED}
    made = httpx.post(
        f"{url}/v1/sessions",
        headers=auth,
        json={"target": "demo", "role": "readonly", "duration_seconds": 60},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    session = made.json()["id"]
    assert httpx.delete(f"{url}/v1/sessions/{session}", headers=auth, timeout=30).is_success
    store = Store(stack.store_url)
    try:
        sources = {r.event: r.detail.get("source") for r in store.audit_records(session)}
    finally:
        store.close()
    assert sources["session.requested"] == sources["session.revoke_requested"]
    return str(sources["session.requested"])


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(stack: Stack, tmp_path: Path) -> None:
    token = device_tokens(stack.idp, "alice")["id_token"]
    assert audited_source(stack, stack.broker_url, token) == "127.0.0.1"

    # The same broker behind a proxy on 127.0.0.1, as the config says.
    behind = stack.broker_config.with_name("behind-proxy.toml")  # same directory: same store
    behind.write_text(
        stack.broker_config.read_text().replace(
            "[broker]\n", '[broker]\ntrusted_proxies = ["127.0.0.1/32"]\n', 1
        )
    )
    port = free_port()
    replica = stack.spawn_broker(port, tmp_path / "behind.log", config=behind)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=30, what="the broker behind a proxy")
        assert audited_source(stack, url, token) == FORGED
    finally:
        end_process(replica)  # type: ignore[arg-type]
        behind.unlink()


def test_a_trusted_proxy_must_be_an_address_or_network(tmp_path: Path) -> None:
    from dbaccess.broker.settings import load_settings
    from dbaccess.errors import ConfigError

    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\ntrusted_proxies = ["10.0.0.0/8", "proxy.internal"]\n'
        '[identity]\nissuer = "https://idp.example.com"\nclient_id = "c"\n'
    )
    with pytest.raises(ConfigError, match="proxy.internal' is not an IP address or network"):
        load_settings(config)
