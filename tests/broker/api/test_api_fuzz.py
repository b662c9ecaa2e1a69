"""Every operation of the broker's API, fed generated input by schemathesis (from the
broker's own /openapi.json), answers with a 2xx or a 4xx in the JSON error envelope —
never a 5xx. The app runs in-process with a real PostgreSQL and MariaDB target and real
tokens from the test provider; sessions the fuzzer manages to create are revoked after."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuzzed_app(
    stack: Stack, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    settings_ = load_settings(stack.broker_config)
    store = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    settings_ = settings_.model_copy(
        update={"broker": settings_.broker.model_copy(update={"store": f"sqlite:///{store}"})}
    )
    app = create_app(settings_, run_reaper=False)
    with TestClient(app) as client:
        yield app
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(PROVISIONER_ENV, stack.provisioner_password)
            for token in tokens.values():
                for session in client.get("/v1/sessions", headers=_bearer(token)).json():
                    if session["state"] == "active":
                        client.delete(f"/v1/sessions/{session['id']}", headers=_bearer(token))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


def _json_error_envelope(ctx, response, case):  # type: ignore[no-untyped-def]
    """A refusal is the broker's JSON error envelope, never a bare text or HTML page."""
    if 400 <= response.status_code < 600:
        body = response.json()
        assert set(body) == {"error"}, body
        assert body["error"]["code"] and body["error"]["message"], body


# A developer, a DBA who approves, the on-call engineer who may break the glass, an auditor:
# between them every branch of every route is open to the fuzzer.
_CALLERS = ("alice", "bob", "carol", "dave")

# Names that exist in the sandbox's broker config (dbaccess/sandbox/stack.py).
_REAL_NAMES = st.one_of(
    st.just({}),
    st.sampled_from(
        [{"target": t, "role": r} for t in ("demo", "shop") for r in ("readonly", "readwrite")]
    ),
)


def _has_input(operation: schemathesis.APIOperation) -> bool:
    return any(len(part) for part in (operation.path_parameters, operation.query, operation.body))


def test_no_input_makes_the_broker_fail(
    api_schema: schemathesis.BaseSchema,
    tokens: dict[str, str],
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    # (schemathesis' own pytest loader does not run on pytest 9: one strategy per operation.)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    seen: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and not _has_input(operation):
            continue  # nothing to make invalid

        @given(
            case=operation.as_strategy(generation_mode=mode),
            real=_REAL_NAMES,
            person=st.sampled_from(_CALLERS),
        )
        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: schemathesis.Case, real: dict[str, str], person: str) -> None:
            # Random names rarely hit a real target: often use real ones, so that the
            # durations, reasons and tickets reach the code past the name checks.
            if isinstance(case.body, dict) and "target" in case.body:
                case.body = {**case.body, **real}
            case.headers = {**(case.headers or {}), **_bearer(tokens[person])}
            response = case.call_and_validate(checks=[not_a_server_error, _json_error_envelope])
            seen[response.status_code] += 1

        call()
    # Both sides were reached: answers, refusals of bad input, of bad rights, of bad ids.
    assert {200, 403, 404, 422} <= set(seen), seen
    assert not {code for code in seen if code >= 500}, seen


def test_numbers_beyond_their_bound_are_a_422(
    fuzzed_app: FastAPI, tokens: dict[str, str], stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The members of the class the fuzzer found (a duration of 10**30 s was a 500 from a
    date overflow): every duration and count the API takes, past its bound."""
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    api = TestClient(fuzzed_app, raise_server_exceptions=False)
    before = set(stack.managed_users())
    huge = [366 * 86400 + 1, 2**63, 10**30]
    for seconds in huge:
        for path, body, who in [
            ("/v1/sessions", {"target": "demo", "role": "readonly"}, "alice"),
            ("/v1/breakglass", {"target": "demo", "incident": "INC-1", "reason": "r"}, "carol"),
        ]:
            answer = api.post(
                path, json={**body, "duration_seconds": seconds}, headers=_bearer(tokens[who])
            )
            assert answer.status_code == 422, answer.text
            assert "duration_seconds" in answer.json()["error"]["message"]
    assert set(stack.managed_users()) == before

    alice = _bearer(tokens["alice"])
    session = api.post(
        "/v1/sessions", json={"target": "demo", "role": "readonly"}, headers=alice
    ).json()
    try:
        for seconds in huge:
            answer = api.post(
                f"/v1/sessions/{session['id']}/renew",
                json={"duration_seconds": seconds},
                headers=alice,
            )
            assert answer.status_code == 422, answer.text
        listed = {s["id"]: s for s in api.get("/v1/sessions", headers=alice).json()}
        assert listed[session["id"]]["expires_at"] == session["expires_at"]  # unchanged
    finally:
        api.delete(f"/v1/sessions/{session['id']}", headers=alice)

    for limit in ("0", "10001", str(10**30)):
        answer = api.get(f"/v1/audit?limit={limit}", headers=_bearer(tokens["dave"]))
        assert answer.status_code == 422, answer.text


def test_a_broker_that_cannot_serve_answers_with_the_envelope(
    fuzzed_app: FastAPI, tokens: dict[str, str], stack: Stack
) -> None:
    """The provisioner password missing from the broker's environment (the autouse fixture
    cleared it) was a plain-text 500; it is a 503 saying what the operator must fix."""
    api = TestClient(fuzzed_app, raise_server_exceptions=False)
    before = set(stack.managed_users())
    answer = api.post(
        "/v1/sessions",
        json={"target": "demo", "role": "readonly"},
        headers=_bearer(tokens["alice"]),
    )
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "broker_unavailable"
    assert PROVISIONER_ENV in error["message"] and "export" in error["hint"]
    assert set(stack.managed_users()) == before


def test_sizes_beyond_their_bound_are_refused_before_anything_reads_them(
    fuzzed_app: FastAPI, tokens: dict[str, str], stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    api = TestClient(fuzzed_app, raise_server_exceptions=False)
    alice = _bearer(tokens["alice"])
    before = set(stack.managed_users())
    # A body past 64 KiB, declared or streamed without a length: 413, nothing created.
    big = b'{"target": "demo", "role": "readonly", "reason": "' + b"x" * 70_000 + b'"}'
    declared = api.post(
        "/v1/sessions", content=big, headers={**alice, "Content-Type": "application/json"}
    )
    streamed = api.post(
        "/v1/sessions",
        content=iter([big[:40_000], big[40_000:]]),
        headers={**alice, "Content-Type": "application/json"},
    )
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"]["code"] == "request_too_large"
    assert set(stack.managed_users()) == before
    # Ids and query texts past their longest real value: 422 naming the parameter.
    answer = api.delete("/v1/sessions/" + "a" * 37, headers=alice)
    assert answer.status_code == 422 and "session_id" in answer.json()["error"]["message"]
    answer = api.post("/v1/requests/" + "a" * 37 + "/approve", headers=_bearer(tokens["bob"]))
    assert answer.status_code == 422 and "request_id" in answer.json()["error"]["message"]
    answer = api.get("/v1/audit", params={"user": "x" * 321}, headers=_bearer(tokens["dave"]))
    assert answer.status_code == 422 and "user" in answer.json()["error"]["message"]
    # a time whose UTC is before year 1: a clear 422, not the store's OverflowError (a 500)
    answer = api.get(
        "/v1/audit", params={"since": "0001-01-01T00:00:00+01:00"}, headers=_bearer(tokens["dave"])
    )
    assert answer.status_code == 422 and "since" in answer.json()["error"]["message"]
    # ... while an ordinary request still works.
    made = api.post("/v1/sessions", json={"target": "demo", "role": "readonly"}, headers=alice)
    assert made.status_code == 201, made.text
    api.delete(f"/v1/sessions/{made.json()['id']}", headers=alice)
