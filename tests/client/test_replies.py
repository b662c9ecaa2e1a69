"""How both clients read a failed broker answer or a call that got none (broker_replies)."""

from __future__ import annotations

import json
import socket
import ssl

import pytest

from dbaccess.client import replies as broker_replies
from dbaccess.errors import (
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    BrokerUntrusted,
    DatabaseError,
    ExitCode,
)


def envelope(code: str, message: str = "m", hint: str | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "hint": hint}}).encode()


@pytest.mark.parametrize(("status", "code"), [(502, "database_error"), (504, "creation_timeout")])
def test_a_failing_target_database_is_a_database_error(status: int, code: str) -> None:
    error = broker_replies.error_from_reply(status, envelope(code, "connection refused", "later"))
    assert isinstance(error, DatabaseError) and error.exit_code == ExitCode.DATABASE_ERROR
    assert int(error.exit_code) == 9  # as documented
    assert (error.message, error.hint, error.broker_code) == ("connection refused", "later", code)


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", envelope("upstream")])
def test_other_upstream_failures_stay_broker_errors(body: bytes) -> None:
    # a proxy in front of the broker answering 502 says nothing about the database
    error = broker_replies.error_from_reply(502, body)
    assert type(error) is BrokerError and error.exit_code == 8


def chained(outer: Exception, inner: BaseException) -> Exception:
    """``outer`` raised from ``inner``, as httpx raises over httpcore over the OS."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def test_each_kind_of_no_answer_has_its_own_message_and_hint() -> None:
    url = "https://broker.example.com"
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "self-signed certificate in certificate chain"
    cases = {
        "tls": chained(OSError("wrapped"), untrusted),
        "dns": chained(OSError("wrapped"), socket.gaierror(-2, "Name or service not known")),
        "refused": ConnectionRefusedError(111, "Connection refused"),
        "timeout": TimeoutError("timed out"),
    }
    found = {name: broker_replies.unreachable(url, exc) for name, exc in cases.items()}
    assert isinstance(found["tls"], BrokerUntrusted) and found["tls"].code == "broker_untrusted"
    assert "does not trust (self-signed certificate in certificate chain)" in found["tls"].message
    assert "SSL_CERT_FILE" in (found["tls"].hint or "")
    assert found["dns"].message.endswith("the name broker.example.com does not resolve (DNS)")
    assert found["refused"].message == f"cannot reach the broker at {url}: connection refused"
    assert isinstance(found["timeout"], BrokerTimeout)
    assert found["timeout"].message == f"the broker at {url} did not answer within 30 s"
    assert "--timeout" in (found["timeout"].hint or "")
    assert len({e.message for e in found.values()}) == len({e.hint for e in found.values()}) == 4
    assert all(isinstance(e, BrokerUnreachable) and e.exit_code == 7 for e in found.values())


def test_the_timeout_is_the_flag_else_the_variable_else_30_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(broker_replies, "_timeout", None)
    assert broker_replies.timeout_seconds() == 30
    monkeypatch.setenv("DBACCESS_TIMEOUT", "4.5")
    assert broker_replies.timeout_seconds() == 4.5
    broker_replies.set_timeout(2)
    assert broker_replies.timeout_seconds() == 2
    for bad in ("0", "-1", "inf", "soon"):
        with pytest.raises(ValueError):
            broker_replies.parse_timeout(bad)


def test_a_cap_on_live_sessions_is_a_refusal_with_the_brokers_words() -> None:
    message = (
        "one person may hold at most 5 live sessions on 'prod' "
        "(limits.sessions_per_person); this session would make 6"
    )
    error = broker_replies.error_from_reply(429, envelope("cap_reached", message, "end one"))
    assert error.exit_code == ExitCode.DENIED and int(error.exit_code) == 5
    assert (error.message, error.hint, error.broker_code) == (message, "end one", "cap_reached")
