"""The CLI core's choices around a grant: which break-glass target, when to ask, how an
approval wait ends. The broker is faked here; the real one is exercised end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dbaccess.client.session.grant import (
    Ask,
    WaitStopped,
    choose_breakglass_target,
    obtain,
    wait_for_approval,
)
from dbaccess.client.session.request import SessionRequest
from dbaccess.errors import ApprovalPending, DeniedError, UsageError
from dbaccess.wire import BreakglassPolicy, RequestInfo, SessionGranted

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def request(state: str = "pending", **extra: Any) -> RequestInfo:
    return RequestInfo(
        id="6f1c2a8e-0000-4000-8000-000000000001",
        subject="alice",
        target="demo",
        role="readwrite",
        duration_seconds=900,
        reason="fix",
        rule="dev-readwrite",
        state=state,
        approvals_required=2,
        approver_groups=["leads"],
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        **extra,
    )


def granted() -> SessionGranted:
    return SessionGranted(
        id="s1",
        target="demo",
        role="readwrite",
        engine="postgres",
        db_user="dba_alice_1",
        state="active",
        created_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
        host="127.0.0.1",
        port=5432,
        database="demo",
        password="pw",
    )  # type: ignore[arg-type]


def want(**extra: Any) -> SessionRequest:
    return SessionRequest(target="demo", role="readwrite", **extra)


class FakeBroker:
    def __init__(
        self,
        policy: BreakglassPolicy | None = None,
        answers: list[Any] | None = None,
        polls: list[RequestInfo] | None = None,
    ):
        self.policy = policy
        self.answers = answers or []
        self.polls = polls or []
        self.sent: list[Any] = []

    def breakglass_policy(self) -> BreakglassPolicy:
        assert self.policy is not None
        return self.policy

    def create_session(self, body: Any) -> Any:
        self.sent.append(body)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_request(self, request_id: str) -> RequestInfo:
        return self.polls.pop(0)


def test_the_only_breakglass_target_needs_no_naming() -> None:
    api = FakeBroker(BreakglassPolicy(allowed=True, targets={"prod": "admin"}))
    assert choose_breakglass_target(api, None, None) == "prod"  # type: ignore[arg-type]


def test_several_targets_ask_or_fail_listing_them() -> None:
    api = FakeBroker(BreakglassPolicy(allowed=True, targets={"b": "admin", "a": "admin"}))
    with pytest.raises(UsageError, match="several targets: a, b"):
        choose_breakglass_target(api, None, None)  # type: ignore[arg-type]
    assert choose_breakglass_target(api, None, lambda names: names[-1]) == "b"  # type: ignore[arg-type]
    assert choose_breakglass_target(api, "a", None) == "a"  # type: ignore[arg-type]


def test_not_on_call_is_told_so_before_anything_else() -> None:
    api = FakeBroker(BreakglassPolicy(allowed=False))
    with pytest.raises(DeniedError, match="may not break the glass"):
        choose_breakglass_target(api, None, None)  # type: ignore[arg-type]


def test_a_missing_reason_is_asked_once_then_sent() -> None:
    missing = DeniedError("rule needs a reason")
    missing.broker_code = "reason_required"
    api = FakeBroker(answers=[missing, granted()])
    asked: list[str] = []
    ask = Ask(reason=lambda why: asked.append(why) or "because")
    assert obtain(api, want(), ask).db_user == "dba_alice_1"  # type: ignore[arg-type]
    assert asked == ["rule needs a reason"] and api.sent[1].reason == "because"


def test_without_a_person_a_missing_reason_is_the_error() -> None:
    missing = DeniedError("rule needs a reason")
    missing.broker_code = "reason_required"
    with pytest.raises(DeniedError, match="needs a reason"):
        obtain(FakeBroker(answers=[missing]), want(), Ask())  # type: ignore[arg-type]


def test_no_wait_reports_the_request_with_its_next_command() -> None:
    api = FakeBroker(answers=[request()])
    with pytest.raises(ApprovalPending) as raised:
        obtain(api, want(reason="fix", wait=False), Ask())  # type: ignore[arg-type]
    assert raised.value.exit_code == 6
    assert raised.value.hint == (
        "once approved: dbaccess connect demo --role readwrite "
        "--request 6f1c2a8e-0000-4000-8000-000000000001"
    )


@pytest.mark.parametrize(
    ("ask", "command"),
    [
        (Ask(resume_verb="exec"), "dbaccess exec demo --role readwrite --request {rid} -- ..."),
        (Ask(resume_verb="tunnel"), "dbaccess tunnel demo --role readwrite --request {rid}"),
        (
            Ask(resume_verb="tunnel", resume_options=" --port 5433"),
            "dbaccess tunnel demo --role readwrite --port 5433 --request {rid}",
        ),
    ],
)
def test_no_wait_names_the_command_the_person_ran(ask: Ask, command: str) -> None:
    rid = "6f1c2a8e-0000-4000-8000-000000000001"
    with pytest.raises(ApprovalPending) as raised:
        obtain(FakeBroker(answers=[request()]), want(reason="fix", wait=False), ask)  # type: ignore[arg-type]
    assert raised.value.hint == "once approved: " + command.format(rid=rid)


def test_an_expired_wait_says_to_ask_again_with_the_same_command() -> None:
    api = FakeBroker(polls=[request("expired")])
    ask = Ask(sleep=lambda _: None, resume_verb="tunnel", resume_options=" --port 5433")
    with pytest.raises(DeniedError) as raised:
        wait_for_approval(api, request(), ask)  # type: ignore[arg-type]
    assert raised.value.hint == "ask again: dbaccess tunnel demo --role readwrite --port 5433"


def test_waiting_polls_then_redeems_the_approved_request() -> None:
    api = FakeBroker(answers=[request(), granted()], polls=[request(), request("approved")])
    slept: list[float] = []
    ask = Ask(sleep=slept.append, poll_seconds=2)
    assert obtain(api, want(reason="fix"), ask).id == "s1"  # type: ignore[arg-type]
    assert slept == [2, 2]
    assert api.sent[1].request_id == "6f1c2a8e-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("final", "message"),
    [
        (
            request("denied", denied_by="frank", deny_reason="not today"),
            "denied by frank: not today",
        ),
        (request("expired"), "expired before it was approved"),
    ],
)
def test_a_wait_ends_in_denial_or_expiry(final: RequestInfo, message: str) -> None:
    api = FakeBroker(polls=[final])
    with pytest.raises(DeniedError, match=message):
        wait_for_approval(api, request(), Ask(sleep=lambda _: None))  # type: ignore[arg-type]


@pytest.mark.parametrize(("verb", "tail"), [("connect", ""), ("exec", " -- ...")])
def test_ctrl_c_while_waiting_names_the_request_and_how_to_resume(verb: str, tail: str) -> None:
    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    rid = "6f1c2a8e-0000-4000-8000-000000000001"
    api = FakeBroker(answers=[request()])
    with pytest.raises(WaitStopped) as raised:
        obtain(
            api,
            want(reason="fix"),  # type: ignore[arg-type]
            Ask(sleep=interrupted, resume_verb=verb),
        )
    assert raised.value.exit_code == 130
    assert raised.value.message == (
        f"stopped waiting; request {rid} stays pending (until 2026-11-22 04:00:00 UTC) — "
        "approvers can still approve it"
    )
    assert raised.value.hint == (
        f"resume: dbaccess {verb} demo --role readwrite --request {rid}{tail}; "
        f"or withdraw it: dbaccess withdraw {rid}"
    )


def test_resuming_a_pending_request_waits_for_it() -> None:
    still = DeniedError("request waits")
    still.broker_code = "request_pending"
    api = FakeBroker(answers=[still, granted()], polls=[request(), request("approved")])
    ask = Ask(sleep=lambda _: None)
    assert obtain(api, want(request_id="6f1c"), ask).id == "s1"  # type: ignore[arg-type]
    assert api.sent[1].request_id == "6f1c2a8e-0000-4000-8000-000000000001"
    with pytest.raises(ApprovalPending):  # --no-wait: pending is the answer (exit 6)
        obtain(
            FakeBroker(answers=[still], polls=[request()]),  # type: ignore[arg-type]
            want(request_id="6f1c", wait=False),
            ask,
        )


def test_an_approved_open_request_handed_back_is_used_even_without_waiting() -> None:
    api = FakeBroker(answers=[request("approved"), granted()])
    assert obtain(api, want(wait=False), Ask()).id == "s1"  # type: ignore[arg-type]
    assert api.sent[1].request_id == "6f1c2a8e-0000-4000-8000-000000000001"
