"""RFC 8628 polling rules, including responses the test provider never sends (slow_down).

A scripted transport stands in for the provider here: it is the only way to produce
``slow_down`` and to check the waits without waiting.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dbaccess.client.auth.device_flow import DeviceFlow
from dbaccess.errors import AuthError

ISSUER = "https://idp.example.com/realms/acme"


def fake_id_token(**claims: Any) -> str:
    body = (
        base64.urlsafe_b64encode(
            json.dumps({"sub": "alice", "exp": 2_000_000_000, **claims}).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.sig"


def flow_with(
    token_answers: list[dict[str, Any]], *, interval: int | None = None, expires_in: int = 600
) -> tuple[DeviceFlow, list[float], list[dict[str, str]]]:
    answers: Iterator[dict[str, Any]] = iter(token_answers)
    sent: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "token_endpoint": ISSUER + "/token",
                    "device_authorization_endpoint": ISSUER + "/device",
                },
            )
        form = dict(httpx.QueryParams(request.content.decode()))
        sent.append(form)
        if request.url.path.endswith("/device"):
            body: dict[str, Any] = {
                "device_code": "dc",
                "user_code": "ABCD-EFGH",
                "verification_uri": ISSUER + "/activate",
                "expires_in": expires_in,
            }
            if interval is not None:
                body["interval"] = interval
            return httpx.Response(200, json=body)
        answer = next(answers)
        return httpx.Response(400 if "error" in answer else 200, json=answer)

    sleeps: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    flow = DeviceFlow(
        ISSUER,
        "cli",
        ["openid"],
        http=httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=sleep,
        clock=lambda: clock[0],
    )
    return flow, sleeps, sent


def test_polls_at_the_servers_interval_and_slows_down_by_five_seconds() -> None:
    flow, sleeps, sent = flow_with(
        [
            {"error": "authorization_pending"},
            {"error": "slow_down"},
            {"error": "authorization_pending"},
            {"id_token": fake_id_token(email="alice@example.com"), "refresh_token": "r1"},
        ],
        interval=7,
    )
    code = flow.start()
    tokens = flow.poll(code)
    assert sleeps == [7, 12, 12]
    assert tokens.subject == "alice" and tokens.refresh_token == "r1"
    assert sent[0] == {"client_id": "cli", "scope": "openid"}
    assert sent[1]["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"


def test_default_interval_is_five_seconds_when_the_server_sends_none() -> None:
    flow, sleeps, _ = flow_with([{"error": "authorization_pending"}, {"id_token": fake_id_token()}])
    flow.poll(flow.start())
    assert sleeps == [5.0]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("expired_token", "expired before it was approved"),
        ("access_denied", "denied at the identity provider"),
        ("invalid_client", "login failed: invalid_client"),
    ],
)
def test_terminal_errors(error: str, message: str) -> None:
    flow, _, _ = flow_with([{"error": "authorization_pending"}, {"error": error}], interval=1)
    with pytest.raises(AuthError, match=message):
        flow.poll(flow.start())


def test_gives_up_when_the_code_expires_while_pending() -> None:
    flow, sleeps, _ = flow_with(
        [{"error": "authorization_pending"}] * 10, interval=5, expires_in=12
    )
    with pytest.raises(AuthError, match="expired before it was approved"):
        flow.poll(flow.start())
    assert sum(sleeps) <= 12


def test_refresh_keeps_the_old_refresh_token_when_not_rotated() -> None:
    flow, _, _ = flow_with([{"id_token": fake_id_token()}])
    assert flow.refresh("r-old").refresh_token == "r-old"


def test_failed_refresh_says_run_login() -> None:
    flow, _, _ = flow_with([{"error": "invalid_grant"}])
    with pytest.raises(AuthError, match="session expired — run dbaccess login"):
        flow.refresh("r-old")
