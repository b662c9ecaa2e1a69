"""Operating the broker: health, metrics, JSON logs, TLS, check-config, reload on SIGHUP."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dbaccess.broker.store import Store
from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.processes import free_port, wait_until
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("ops")) as stack:
        yield stack


def bearer(stack: Stack, login: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + device_tokens(stack.idp, login)["id_token"]}


def test_health_openapi_and_metrics(ops: Stack) -> None:
    health = httpx.get(ops.broker_url + "/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["store"] == {"status": "ok"}
    paths = httpx.get(ops.broker_url + "/openapi.json").json()["paths"]
    assert {
        "/v1/config",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/renew",
    } <= set(paths)
    alice = bearer(ops, "alice")
    session = httpx.post(
        ops.broker_url + "/v1/sessions", headers=alice, json={"target": "demo", "role": "readonly"}
    ).json()
    httpx.delete(f"{ops.broker_url}/v1/sessions/{session['id']}", headers=alice)
    httpx.post(
        ops.broker_url + "/v1/sessions",
        headers=bearer(ops, "mallory"),
        json={"target": "demo", "role": "readonly"},
    )
    short = httpx.post(
        ops.broker_url + "/v1/sessions",
        headers=alice,
        json={"target": "demo", "role": "readonly", "duration_seconds": 1},
    ).json()
    wait_until(lambda: short["db_user"] not in ops.managed_users(), timeout=15, what="the reaper")
    text = ""

    def reported() -> bool:
        nonlocal text
        text = httpx.get(ops.broker_url + "/metrics").text
        return 'dbaccess_revocation_lag_seconds_count{target="demo"} 1.0' in text

    wait_until(reported, timeout=5, what="the lag metric")
    assert 'dbaccess_sessions_issued_total{role="readonly",target="demo"} 2.0' in text
    assert 'dbaccess_sessions_revoked_total{cause="user",target="demo"} 1.0' in text
    assert 'dbaccess_sessions_revoked_total{cause="expired",target="demo"} 1.0' in text
    assert 'dbaccess_sessions_denied_total{target="demo"} 1.0' in text


def live_gauge(url: str) -> dict[str, float]:
    """``dbaccess_sessions_live`` per target, as Prometheus would scrape it from ``url``."""
    found = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('dbaccess_sessions_live{target="'):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


def test_live_sessions_gauge_is_the_stores_count(ops: Stack, tmp_path: Path) -> None:
    alice = bearer(ops, "alice")
    before = live_gauge(ops.broker_url)
    assert set(before) == {"demo", "shop"}  # every target, also with no session
    made = [
        httpx.post(
            ops.broker_url + "/v1/sessions",
            headers=alice,
            timeout=30,
            json={"target": target, "role": "readonly"},
        ).json()
        for target in ("demo", "demo", "shop")
    ]
    expected = {"demo": before["demo"] + 2, "shop": before["shop"] + 1}
    assert live_gauge(ops.broker_url) == expected
    replica_port = free_port()
    replica = ops.spawn_broker(replica_port, tmp_path / "replica.log")
    replica_url = f"http://127.0.0.1:{replica_port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(replica_url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="a second replica")
        # another replica, which issued none of them, reports the same
        assert live_gauge(replica_url) == expected
        # and so does a restarted broker (a gauge kept in memory would start at 0)
        ops.stop_broker()
        ops.start_broker()
        assert live_gauge(ops.broker_url) == expected
        httpx.delete(f"{replica_url}/v1/sessions/{made[0]['id']}", headers=alice)
        expected["demo"] -= 1
        assert live_gauge(ops.broker_url) == live_gauge(replica_url) == expected
    finally:
        replica.terminate()
        replica.wait(timeout=20)
        for session in made[1:]:
            httpx.delete(f"{ops.broker_url}/v1/sessions/{session['id']}", headers=alice)
    assert live_gauge(ops.broker_url) == before


def test_logs_are_json_lines(ops: Stack) -> None:
    lines = [line for line in ops.broker_log.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["logger"] == "uvicorn.access" for r in records)


def test_check_config(ops: Stack, tmp_path: Path) -> None:
    env = {**os.environ, "DBACCESS_SANDBOX_PROVISIONER_PASSWORD": ops.provisioner_password}
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "dbaccess.broker",
            "check-config",
            "--config",
            str(ops.broker_config),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok (2 target(s), each bootstrapped, 3 rule(s))" in ok.stdout
    assert ok.stderr == ""
    bad = tmp_path / "bad.toml"
    bad.write_text(
        ops.broker_config.read_text().replace('max_duration = "8h"', 'max_duration = "forever"')
    )
    refused = subprocess.run(
        [sys.executable, "-m", "dbaccess.broker", "check-config", "--config", str(bad)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 3
    assert f"error: {bad}: rules.1.max_duration: 'forever' is not a duration" in refused.stderr


def test_reload_on_sighup_revokes_what_it_withdraws_and_refuses_bad_files(ops: Stack) -> None:
    alice = bearer(ops, "alice")

    def ask(target: str) -> dict[str, str]:
        answer = httpx.post(
            ops.broker_url + "/v1/sessions",
            headers=alice,
            json={"target": target, "role": "readonly"},
        )
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    withdrawn, kept = ask("demo"), ask("shop")
    original = ops.broker_config.read_text()
    pid = ops.broker_pid
    try:
        # a new policy: developers lose access to demo
        ops.broker_config.write_text(
            original.replace(
                'targets = ["demo", "shop"]\nroles = ["readonly"]',
                'targets = ["shop"]\nroles = ["readonly"]',
            )
        )
        os.kill(pid, signal.SIGHUP)

        def denied() -> bool:
            answer = httpx.post(
                ops.broker_url + "/v1/sessions",
                headers=alice,
                json={"target": "demo", "role": "readonly"},
            )
            return answer.status_code == 403

        wait_until(denied, timeout=10, what="the new policy")
        # the session the rule no longer grants is revoked; the one it still grants stays
        wait_until(
            lambda: withdrawn["db_user"] not in ops.managed_users(),
            timeout=10,
            what="the withdrawn session's revocation",
        )
        sessions = httpx.get(ops.broker_url + "/v1/sessions", headers=alice).json()
        ids = [s["id"] for s in sessions]
        assert kept["id"] in ids and withdrawn["id"] not in ids
        lease = Store(ops.store_url).get(withdrawn["id"])
        assert lease is not None and lease.revoke_cause == "policy_withdrawn"

        # a broken file is refused and the running policy stays
        ops.broker_config.write_text("[identity\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(
            lambda: "configuration reload refused" in ops.broker_log.read_text(),
            timeout=10,
            what="the refusal",
        )
        assert denied()
        shop = ask("shop")
        httpx.delete(f"{ops.broker_url}/v1/sessions/{shop['id']}", headers=alice)
    finally:
        ops.broker_config.write_text(original)
        os.kill(pid, signal.SIGHUP)
    httpx.delete(f"{ops.broker_url}/v1/sessions/{kept['id']}", headers=alice)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_serves_https(ops: Stack, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "DBACCESS_SANDBOX_PROVISIONER_PASSWORD": ops.provisioner_password}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbaccess.broker",
            "serve",
            "--config",
            str(ops.broker_config),
            "--port",
            str(port),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trust = ssl.create_default_context(cafile=str(cert))
    try:

        def up() -> bool:
            try:
                return (
                    httpx.get(
                        f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=1
                    ).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="the HTTPS broker")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        process.terminate()
        process.wait(timeout=10)
    half = subprocess.run(
        [
            sys.executable,
            "-m",
            "dbaccess.broker",
            "serve",
            "--config",
            str(ops.broker_config),
            "--tls-cert",
            str(cert),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr


def test_several_worker_processes_share_the_store(ops: Stack, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "DBACCESS_SANDBOX_PROVISIONER_PASSWORD": ops.provisioner_password}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbaccess.broker",
            "serve",
            "--config",
            str(ops.broker_config),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30, what="the two-worker broker")
        alice = bearer(ops, "alice")
        made = [
            httpx.post(
                url + "/v1/sessions",
                headers=alice,
                timeout=30,
                json={"target": "demo", "role": "readonly"},
            ).json()
            for _ in range(6)
        ]
        listed = {s["id"] for s in httpx.get(url + "/v1/sessions", headers=alice).json()}
        assert {s["id"] for s in made} <= listed  # whichever worker answered, one store
        for session in made:
            gone = httpx.delete(f"{url}/v1/sessions/{session['id']}", headers=alice)
            assert gone.json()["state"] == "revoked"
    finally:
        process.terminate()
        process.wait(timeout=20)
