"""One session request from the flags to the broker: refused on the client with the words
the broker's 422 would use (without pydantic), and sent as the body the broker reads."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from dbaccess.client.session.request import SessionRequest
from dbaccess.errors import ExitCode, UsageError
from dbaccess.wire import BreakglassCreate, SessionCreate


def pydantic_says(
    model: type[SessionCreate] | type[BreakglassCreate], body: dict[str, Any]
) -> str | None:
    """The usage error the client gave with the wire models (before SessionRequest)."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
    return None


def we_say(request: SessionRequest) -> str | None:
    try:
        request.validate()
    except UsageError as exc:
        assert exc.exit_code == ExitCode.USAGE
        return exc.message
    return None


SESSION_CASES = [
    {},
    {"target": ""},
    {"role": ""},
    {"target": "t" * 64, "role": "r" * 64},
    {"target": "t" * 65},
    {"target": "\x1b" * 65},  # the length is checked before the characters
    {"target": "prod\u200b"},
    {"role": "r\n"},
    {"reason": ""},
    {"reason": "x" * 500},
    {"reason": "x" * 501},
    {"reason": "\x1b" * 501},  # an optional field: the characters first
    {"reason": "refund \u202edaolnwod\u202c"},
    {"reason": "👩\u200d💻 on call"},
    {"ticket": "t" * 101},
    {"request_id": "0" * 37},
    {"target": "\x1b", "role": "", "reason": "x" * 501, "ticket": "\x07", "request_id": "0" * 37},
    {"duration": timedelta(hours=1)},
    {"duration": timedelta(days=367)},
]


@pytest.mark.parametrize("change", SESSION_CASES)
def test_a_session_request_is_refused_as_the_broker_would(change: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"target": "demo", "role": "readonly", **change}
    request = SessionRequest(**fields)
    assert we_say(request) == pydantic_says(SessionCreate, request.to_wire())
    if we_say(request) is None:
        assert (
            SessionCreate.model_validate(request.to_wire()).model_dump(exclude_none=True)
            == request.to_wire()
        )


BREAKGLASS_CASES = [
    {},
    {"incident": ""},
    {"reason": ""},
    {"target": "", "incident": "i" * 101, "reason": "r" * 501},
    {"target": "t" * 65},
    {"target": "\x1b", "incident": "\x1b", "reason": "\x1b"},
    {"drill": True, "duration": timedelta(minutes=30)},
]


@pytest.mark.parametrize("change", BREAKGLASS_CASES)
def test_a_breakglass_request_is_refused_as_the_broker_would(change: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "target": "prod",
        "role": "breakglass",
        "incident": "INC-1",
        "reason": "disk full",
        **change,
    }
    request = SessionRequest(**fields)
    assert request.breakglass
    assert we_say(request) == pydantic_says(BreakglassCreate, request.to_wire())


def test_several_refusals_are_named_together_in_the_brokers_order() -> None:
    with pytest.raises(UsageError) as refused:
        SessionRequest(target="", role="r", reason="x" * 501, request_id="0" * 37).validate()
    assert refused.value.message == (
        "target: String should have at least 1 character; "
        "reason: Value should have at most 500 items after validation, not 501; "
        "request_id: Value should have at most 36 items after validation, not 37"
    )


def test_the_body_is_what_was_asked_without_the_rest() -> None:
    asked = SessionRequest(
        target="demo",
        role="readonly",
        duration=timedelta(minutes=90),
        reason="nightly dump",
        command=("pg_dump",),
        client="pgcli",
        client_args=("-x",),
        wait=False,
    )
    assert asked.validate() is asked
    assert asked.to_wire() == {
        "target": "demo",
        "role": "readonly",
        "duration_seconds": 5400,
        "reason": "nightly dump",
    }
    assert SessionRequest(
        target="demo", role="readonly", ticket="OPS-1", request_id="6f1c"
    ).to_wire() == {"target": "demo", "role": "readonly", "ticket": "OPS-1", "request_id": "6f1c"}


def test_a_breakglass_body_carries_the_incident_not_the_role() -> None:
    body = SessionRequest(
        target="prod", role="breakglass", incident="INC-7", reason="disk full", drill=True
    ).to_wire()
    assert body == {"target": "prod", "incident": "INC-7", "reason": "disk full", "drill": True}
    assert BreakglassCreate.model_validate(body).drill
    assert (
        "drill"
        not in SessionRequest(
            target="prod", role="breakglass", incident="INC-7", reason="r"
        ).to_wire()
    )


def test_redeeming_an_approved_request_sends_its_id_alone() -> None:
    asked = SessionRequest(
        target="demo",
        role="readwrite",
        duration=timedelta(hours=1),
        reason="fix",
        ticket="OPS-1",
        command=("true",),
    )
    redeem = asked.redeeming("6f1c")
    assert redeem.to_wire() == {"target": "demo", "role": "readwrite", "request_id": "6f1c"}
    assert not redeem.wait and redeem.command == ("true",)


def test_a_reason_asked_for_later_is_checked_too() -> None:
    asked = SessionRequest(target="demo", role="readwrite")
    assert asked.with_reason("because").reason == "because"
    with pytest.raises(UsageError, match="^reason: Value error, must not contain control"):
        asked.with_reason("fix\x1b[2J")
