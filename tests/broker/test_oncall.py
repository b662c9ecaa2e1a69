"""On-call schedules (issue 15, point 1): real iCalendar files with recurring shifts,
time zones across a DST change, an excluded date and an override; a feed over real HTTPS
that answers, fails or hangs; and what the policy decides with each."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbaccess.broker import oncall
from dbaccess.broker.identity import Principal
from dbaccess.broker.oncall import Schedules
from dbaccess.broker.policy import AccessRequest, decide
from dbaccess.broker.settings import OncallSource, Rule
from dbaccess.sandbox.tls import make_certificates

# Two people alternate weekly, Monday 09:00 Berlin time; Europe/Berlin leaves summer time
# on 2026-10-25, inside alice's first shift. Her 2026-11-16 shift is cancelled (EXDATE)
# and bob covers it with a one-off event. No VTIMEZONE: the TZID names the zone database.
ROTATION = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//dbaccess tests//on call//EN
BEGIN:VEVENT
UID:alice-rotation@example.com
DTSTAMP:20261001T000000Z
SUMMARY:On Call - Alice - Primary
DTSTART;TZID=Europe/Berlin:20261019T090000
DTEND;TZID=Europe/Berlin:20261026T090000
RRULE:FREQ=WEEKLY;INTERVAL=2
EXDATE;TZID=Europe/Berlin:20261116T090000
ATTENDEE;CN=Alice:mailto:Alice@Example.com
END:VEVENT
BEGIN:VEVENT
UID:bob-rotation@example.com
DTSTAMP:20261001T000000Z
SUMMARY:On Call - Bob - Primary
DTSTART;TZID=Europe/Berlin:20261026T090000
DURATION:P7D
RRULE:FREQ=WEEKLY;INTERVAL=2
ATTENDEE;CN=Bob:mailto:bob@example.com
END:VEVENT
BEGIN:VEVENT
UID:bob-cover@example.com
DTSTAMP:20261101T000000Z
SUMMARY:On Call - Bob - Primary (covering)
DTSTART;TZID=Europe/Berlin:20261116T090000
DTEND;TZID=Europe/Berlin:20261123T090000
ATTENDEE;CN=Bob:mailto:bob@example.com
END:VEVENT
END:VCALENDAR
"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def source(ics: str | Path, **extra: object) -> OncallSource:
    return OncallSource.model_validate({"name": "primary", "ics": str(ics), **extra})


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    path = tmp_path / "oncall.ics"
    path.write_text(ROTATION)
    return path


def test_recurring_shifts_in_their_time_zone(feed: Path) -> None:
    schedules = Schedules([source(feed)])
    # 09:00 Berlin is 07:00 UTC in summer time and 08:00 UTC after the change
    first = schedules.shift("primary", "alice@example.com", at("2026-10-26T07:30:00"))
    assert first is not None
    assert (first.start, first.end) == (at("2026-10-19T07:00:00"), at("2026-10-26T08:00:00"))
    assert first.summary == "On Call - Alice - Primary" and first.level == 1
    assert schedules.shift("primary", "alice@example.com", at("2026-10-26T08:00:00")) is None
    # the next week is bob's (DURATION instead of DTEND), then alice's again, in winter time
    bob = schedules.shift("primary", "bob@example.com", at("2026-10-28T10:00:00"))
    assert bob is not None and bob.end == at("2026-11-02T08:00:00")
    assert schedules.shift("primary", "alice@example.com", at("2026-10-28T10:00:00")) is None
    third = schedules.shift("primary", "ALICE@example.com", at("2026-11-02T08:00:00"))
    assert third is not None
    assert (third.start, third.end) == (at("2026-11-02T08:00:00"), at("2026-11-09T08:00:00"))
    assert schedules.shift("primary", "alice@example.com", at("2026-11-10T10:00:00")) is None


def test_an_excluded_date_and_an_override(feed: Path) -> None:
    schedules = Schedules([source(feed)])
    when = at("2026-11-18T12:00:00")
    assert schedules.shift("primary", "alice@example.com", when) is None
    cover = schedules.shift("primary", "bob@example.com", when)
    assert cover is not None and cover.summary.endswith("(covering)")
    assert cover.end == at("2026-11-23T08:00:00")
    # and the rotation goes on after it, a year on
    later = schedules.shift("primary", "alice@example.com", at("2027-11-15T12:00:00"))
    assert later is not None and later.start == at("2027-11-15T08:00:00")


def test_no_email_no_shift(feed: Path) -> None:
    schedules = Schedules([source(feed)])
    assert schedules.shift("primary", None, at("2026-10-20T12:00:00")) is None
    assert schedules.shift("other", "alice@example.com", at("2026-10-20T12:00:00")) is None


def test_a_copy_is_used_for_max_age_at_most(feed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(oncall.time, "monotonic", lambda: clock[0])
    schedules = Schedules([source(feed, max_age="1m")])
    when = at("2026-10-20T12:00:00")
    assert schedules.shift("primary", "alice@example.com", when) is not None
    feed.write_text(ROTATION.replace("mailto:Alice@Example.com", "mailto:carol@example.com"))
    clock[0] += 59
    assert schedules.shift("primary", "alice@example.com", when) is not None  # cached
    clock[0] += 2
    assert schedules.shift("primary", "alice@example.com", when) is None  # read again
    assert schedules.shift("primary", "carol@example.com", when) is not None
    # a source gone after that: its old copy is not used once too old
    feed.unlink()
    clock[0] += 61
    assert schedules.shift("primary", "carol@example.com", when) is None


@pytest.mark.parametrize(
    "content", [b"not a calendar", b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n", b"\xff\xfe\x00"]
)
def test_a_feed_that_does_not_parse_gives_no_shift(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.ics"
    path.write_bytes(content)
    assert Schedules([source(path)]).shift("primary", "a@example.com", at("2026-10-20")) is None
    assert "on-call source 'primary' is unavailable" in caplog.text


# -- over HTTPS ---------------------------------------------------------------------------


class _Feed(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if _Feed.mode == "hang":
            time.sleep(4)
        if _Feed.mode == "fail":
            self.send_error(500)
            return
        body = ROTATION.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/calendar")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_feed(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    certs = make_certificates(tmp_path / "tls")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Feed)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/oncall.ics", certs.ca
    finally:
        server.shutdown()
        server.server_close()
        _Feed.mode = "ok"


@pytest.mark.parametrize("mode", ["ok", "fail", "hang"])
def test_a_feed_over_https(https_feed: tuple[str, Path], mode: str) -> None:
    url, ca = https_feed
    _Feed.mode = mode
    schedules = Schedules([source(url, ca_file=str(ca), timeout="1s")])
    started = time.monotonic()
    shift = schedules.shift("primary", "alice@example.com", at("2026-10-20T12:00:00"))
    took = time.monotonic() - started
    assert (shift is not None) == (mode == "ok")
    assert took < 2.5  # a hanging source costs its timeout, no more


def test_a_feed_whose_certificate_is_not_trusted_gives_no_shift(
    https_feed: tuple[str, Path],
) -> None:
    url, _ = https_feed
    schedules = Schedules([source(url)])  # the public CAs only
    assert schedules.shift("primary", "alice@example.com", at("2026-10-20T12:00:00")) is None


# -- the decision -------------------------------------------------------------------------

RULE = {
    "name": "prod",
    "groups": ["dev"],
    "targets": ["prod"],
    "roles": ["readonly", "readwrite"],
    "max_duration": "8h",
    "approvals": 1,
    "approver_groups": ["leads"],
    "oncall": {"source": "primary", "roles": ["readonly"], "levels": [1]},
}


def person(email: str, verified: bool = True) -> Principal:
    return Principal(
        subject=email, email=email, email_verified=verified, name=None, groups=frozenset({"dev"})
    )


def test_on_call_waives_the_approvals_until_the_shift_ends(feed: Path) -> None:
    schedules = Schedules([source(feed)])
    now = at("2026-10-26T05:00:00")  # three hours before alice's shift ends
    rules = [Rule.model_validate(RULE)]
    want = AccessRequest("prod", "readonly", timedelta(hours=8))
    decision = decide(person("alice@example.com"), want, rules, schedules.shift, now)
    assert decision.allowed and decision.approvals_required == 0
    assert decision.duration == timedelta(hours=3)  # clipped to the end of the shift
    assert decision.on_call is not None and decision.on_call.end == at("2026-10-26T08:00:00")
    assert "without approval: on call in 'primary' (level 1) until 2026-10-26 08:00 UTC" in (
        decision.explanation
    )
    # a shorter request keeps its length
    short = AccessRequest("prod", "readonly", timedelta(minutes=30))
    assert decide(person("alice@example.com"), short, rules, schedules.shift, now).duration == (
        timedelta(minutes=30)
    )


@pytest.mark.parametrize(
    ("who", "role", "rule_change", "why"),
    [
        ("bob@example.com", "readonly", {}, "not on call then"),
        ("alice@example.com", "readwrite", {}, "a role on-call does not cover"),
        ("alice@example.com", "readonly", {"levels": [2]}, "a level that does not qualify"),
    ],
)
def test_otherwise_the_rules_approvals_apply(
    feed: Path, who: str, role: str, rule_change: dict[str, object], why: str
) -> None:
    rule = Rule.model_validate({**RULE, "oncall": {**RULE["oncall"], **rule_change}})  # type: ignore[dict-item]
    decision = decide(
        person(who),
        AccessRequest("prod", role, timedelta(hours=1)),
        [rule],
        Schedules([source(feed)]).shift,
        at("2026-10-20T12:00:00"),
    )
    assert decision.allowed and decision.approvals_required == 1, why
    assert decision.on_call is None


def test_an_unverified_email_is_not_on_call(feed: Path) -> None:
    decision = decide(
        person("alice@example.com", verified=False),
        AccessRequest("prod", "readonly", timedelta(hours=1)),
        [Rule.model_validate(RULE)],
        Schedules([source(feed)]).shift,
        at("2026-10-20T12:00:00"),
    )
    assert decision.approvals_required == 1


def test_a_source_that_is_down_falls_back_to_approvals(tmp_path: Path) -> None:
    decision = decide(
        person("alice@example.com"),
        AccessRequest("prod", "readonly", timedelta(hours=1)),
        [Rule.model_validate(RULE)],
        Schedules([source(tmp_path / "missing.ics")]).shift,
        at("2026-10-20T12:00:00"),
    )
    assert decision.allowed and decision.approvals_required == 1
    assert decision.explanation == (
        "granted by rule 'prod' once approved by 1 member(s) of leads "
        "(not on call in 'primary' now)"
    )


def test_a_shift_ending_within_a_minute_waives_nothing(feed: Path) -> None:
    decision = decide(
        person("alice@example.com"),
        AccessRequest("prod", "readonly", timedelta(hours=1)),
        [Rule.model_validate(RULE)],
        Schedules([source(feed)]).shift,
        at("2026-10-26T07:59:30"),
    )
    assert decision.approvals_required == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"oncall": {"source": "primary", "roles": ["ddl"]}}, "does not grant: ddl"),
    ],
)
def test_rule_oncall_is_checked(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule.model_validate({**RULE, **change})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ics": "http://example.com/x.ics"}, "file path or an https:// URL"),
        ({"ics": "x.ics", "timeout": "5s"}, "at most 2s"),
        ({"ics": "x.ics", "max_age": "2h"}, "between 10s and 1h"),
    ],
)
def test_a_source_is_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OncallSource.model_validate({"name": "primary", **values})


def test_a_failing_source_is_not_asked_again_for_every_look_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # any user's request looks the source up: while it fails, each would wait for a fetch
    # of its own, one after another under the source's lock, and fill the worker threads
    asked: list[float] = []

    def failing(_source: OncallSource) -> bytes:
        asked.append(time.monotonic())
        raise oncall.SourceUnavailable("the feed answered HTTP 500")

    schedules = Schedules([source(tmp_path / "feed.ics")], fetch=failing)
    for _ in range(50):
        assert schedules.shift("primary", "a@example.com", at("2026-10-20")) is None
    assert len(asked) == 1
    # once the backoff has passed, it is asked again (and back in use when it answers)
    clock = time.monotonic() + oncall.FAILURE_BACKOFF + 1
    monkeypatch.setattr(oncall.time, "monotonic", lambda: clock)
    assert schedules.shift("primary", "a@example.com", at("2026-10-20")) is None
    assert len(asked) == 2
