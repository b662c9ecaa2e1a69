"""Who is on call now, from the schedule sources of ``[[oncall]]``.

A source is an iCalendar (RFC 5545) feed or file, the export PagerDuty, Opsgenie and
Google Calendar all offer; recurring shifts are expanded by ``recurring-ical-events``. A
person is on call during an event that names them as ATTENDEE (``mailto:`` their verified
email, as PagerDuty's feeds do). A feed stands for one escalation level (``level``).

Or a source is PagerDuty's REST API through its official client (``pagerduty``): the
on-calls now of the escalation policies named, each with its own escalation level, the
user's email and the shift's end. An entry without an end (a permanent assignment) counts
until the copy's ``max_age``, so a session it waives approvals for ends there.

A look-up never waits longer than the source's ``timeout``, and a copy is used for
``max_age`` at most: a source that is down, slow, or unreadable gives no shift, so the
rule's normal approvals apply (never a grant). Failures are logged at most once a minute
per source.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dbaccess.broker.settings import OncallSource
from dbaccess.text import one_line

log = logging.getLogger("dbaccess.broker.oncall")

FAILURE_LOG_INTERVAL = 60.0  # seconds between two warnings about one source
# After a failed fetch, the source is taken as unavailable for this long without asking it
# again: else every look-up (any user's request) would wait for its own failing fetch, one
# after another under the source's lock, and a few dozen requests fill every worker thread.
FAILURE_BACKOFF = 10.0
MAX_FEED_BYTES = 16 * 1024 * 1024  # a feed larger than this is refused, not parsed
_MARGIN = timedelta(days=1)


@dataclass(frozen=True)
class Shift:
    """The evidence an on-call grant rests on (in the decision and the audit record)."""

    source: str
    level: int
    start: datetime
    end: datetime
    summary: str

    def evidence(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "level": self.level,
            "shift_start": self.start.isoformat(),
            "shift_end": self.end.isoformat(),
            "summary": self.summary,
        }


class SourceUnavailable(Exception):
    """The feed could not be read or parsed (the message names why, never a secret)."""


class _Feed:
    """One source's parsed calendar, fetched again once older than ``max_age``."""

    def __init__(self, source: OncallSource, fetch: Callable[[OncallSource], bytes]) -> None:
        self.source = source
        self._fetch = fetch
        self._lock = threading.Lock()
        self._calendar: Any = None
        self._fetched = -1e18  # monotonic time of the copy in _calendar
        self._failure_logged = -1e18
        self._failed: tuple[float, str] = (-1e18, "")  # the last failure: when, and why

    def calendar(self) -> Any:
        """The parsed calendar not older than max_age, or SourceUnavailable."""
        max_age = self.source.max_age.total_seconds()
        with self._lock:  # one fetch at a time per source; the others wait for it
            if time.monotonic() - self._fetched <= max_age:
                return self._calendar
            self._calendar = None  # a stale copy is never used
            self.not_failing_lately()
            try:
                self._calendar = _parse(self._fetch(self.source))
            except SourceUnavailable as exc:
                self.failed(str(exc))
                raise
            self._fetched = time.monotonic()
            return self._calendar

    def not_failing_lately(self) -> None:
        """SourceUnavailable at once, without a fetch, within FAILURE_BACKOFF of a failure."""
        at, why = self._failed
        if time.monotonic() - at < FAILURE_BACKOFF:
            raise SourceUnavailable(why)

    def failed(self, why: str) -> None:
        self._failed = (time.monotonic(), why)
        self._log_failure(why)

    def _log_failure(self, why: str) -> None:
        now = time.monotonic()
        if now - self._failure_logged >= FAILURE_LOG_INTERVAL:
            self._failure_logged = now
            log.warning(
                "on-call source '%s' is unavailable (%s): its rules fall back to their approvals",
                self.source.name,
                why,
            )


def fetch_feed(source: OncallSource) -> bytes:
    """The feed's bytes, from a file or over HTTPS, within the source's timeout."""
    where = source.ics
    assert where is not None  # a PagerDuty source is fetched by fetch_oncalls
    if where.startswith("https://"):
        import httpx

        try:
            with httpx.stream(
                "GET",
                where,
                timeout=source.timeout.total_seconds(),
                follow_redirects=False,
                verify=(
                    ssl.create_default_context(cafile=str(source.ca_file))
                    if source.ca_file is not None
                    else True
                ),
            ) as reply:
                if reply.status_code != 200:
                    raise SourceUnavailable(f"HTTP {reply.status_code}")
                data = bytearray()
                deadline = time.monotonic() + source.timeout.total_seconds()
                for chunk in reply.iter_bytes():
                    data += chunk
                    if len(data) > MAX_FEED_BYTES:
                        raise SourceUnavailable("the feed is larger than 16 MiB")
                    if time.monotonic() > deadline:  # a trickle: each read within timeout
                        raise SourceUnavailable("the feed took longer than its timeout")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(type(exc).__name__) from None
    try:
        path = Path(where)
        if path.stat().st_size > MAX_FEED_BYTES:
            raise SourceUnavailable("the feed is larger than 16 MiB")
        return path.read_bytes()
    except OSError as exc:
        raise SourceUnavailable(exc.strerror or type(exc).__name__) from None


def _parse(data: bytes) -> Any:
    import icalendar

    try:
        return icalendar.Calendar.from_ical(data)
    except (ValueError, KeyError, IndexError) as exc:
        raise SourceUnavailable(f"not an iCalendar feed ({type(exc).__name__})") from None


def _attendees(event: Any) -> set[str]:
    found = event.get("ATTENDEE")
    values = found if isinstance(found, list) else [found] if found is not None else []
    emails = set()
    for value in values:
        text = str(value)
        if text.lower().startswith("mailto:"):
            emails.add(text[len("mailto:") :].strip().lower())
    return emails


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # a floating time: read as UTC, the broker's zone
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    # an all-day event (a date): from its midnight, in UTC
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


@dataclass(frozen=True)
class _Occurrence:
    start: datetime
    end: datetime
    attendees: frozenset[str]
    summary: str
    level: int | None = None  # PagerDuty's escalation level; an ICS feed's is its source's


class _RefusedReply(Exception):
    """A reply the PagerDuty client would retry (429, 5xx) or that is no answer: the
    look-up ends at once, within its timeout, instead of the client's retry loop."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


def _no_retries(reply: Any) -> None:
    if reply.status_code != 200:
        raise _RefusedReply(reply.status_code)


MAX_ONCALLS = 10_000  # entries of one look-up; a reply with more is refused


def pagerduty_client(source: OncallSource) -> Any:
    """PagerDuty's client for a ``pagerduty`` source: its key read from its file now, TLS
    as the source says, and none of the client's retries (they sleep, and loop without
    limit on 429): a reply other than 200 raises ``_RefusedReply`` at once."""
    import pagerduty

    feed = source.pagerduty
    assert feed is not None
    try:
        token = feed.token_file.read_text().strip()
    except OSError as exc:
        raise SourceUnavailable(f"the token file: {exc.strerror}") from None
    if not token:
        raise SourceUnavailable("the token file is empty")
    client = pagerduty.RestApiV2Client(
        token,
        base_url=feed.url,
        verify=(
            ssl.create_default_context(cafile=str(source.ca_file))
            if source.ca_file is not None
            else True
        ),
        event_hooks={"response": [_no_retries]},
        trust_env=False,
    )
    client.timeout = source.timeout.total_seconds()  # type: ignore[assignment]  # per request
    client.max_network_attempts = 0  # a network error ends the look-up: no retry, no sleep
    return client


def pagerduty_errors() -> tuple[type[Exception], ...]:
    """What a PagerDuty look-up raises when the source fails (``SourceUnavailable`` says
    which: pagerduty's own messages may carry part of the key, "*abcd", so only types)."""
    import httpx
    import pagerduty

    return (_RefusedReply, pagerduty.Error, httpx.HTTPError, ValueError, TypeError, KeyError)


def fetch_oncalls(source: OncallSource) -> list[dict[str, Any]]:
    """``GET /oncalls`` (every page) for the source's escalation policies, within its
    timeout in all."""
    feed = source.pagerduty
    assert feed is not None
    deadline = time.monotonic() + source.timeout.total_seconds()
    client = pagerduty_client(source)
    found: list[dict[str, Any]] = []
    try:
        params = {
            "escalation_policy_ids": list(feed.escalation_policy_ids),
            "include": ["users"],
            "time_zone": "UTC",
        }
        for entry in client.iter_all("oncalls", params=params):
            found.append(entry)
            if len(found) > MAX_ONCALLS:
                raise SourceUnavailable(f"more than {MAX_ONCALLS} on-call entries")
            if time.monotonic() > deadline:
                raise SourceUnavailable("the on-calls took longer than the timeout")
    except pagerduty_errors() as exc:
        raise SourceUnavailable(_why(exc)) from None
    finally:
        client.close()
    return found


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _RefusedReply) else type(exc).__name__


def fetch_incident(source: OncallSource, incident_id: str) -> dict[str, Any]:
    """PagerDuty's ``GET /incidents/{id}`` (an incident's ID or its number), within the
    source's timeout: the incident's fields, or SourceUnavailable."""
    from urllib.parse import quote

    client = pagerduty_client(source)
    try:
        found = client.rget(f"incidents/{quote(incident_id, safe='')}")
    except pagerduty_errors() as exc:
        raise SourceUnavailable(_why(exc)) from None
    finally:
        client.close()
    if not isinstance(found, dict):
        raise SourceUnavailable("not an incident")
    return found


def _pagerduty_occurrences(
    source: OncallSource, entries: list[dict[str, Any]], fetched: datetime
) -> list[_Occurrence]:
    found = []
    for entry in entries:
        try:
            user = entry["user"]
            email = user["email"] if isinstance(user, dict) else None
            level = int(entry["escalation_level"])
            start = _from_iso(entry.get("start")) or fetched
            end = _from_iso(entry.get("end")) or fetched + source.max_age
            policy = entry.get("escalation_policy") or {}
            schedule = entry.get("schedule") or {}
        except (KeyError, TypeError, ValueError):
            continue  # an entry of another shape names nobody
        if not isinstance(email, str) or not email:
            continue
        summary = " / ".join(
            str(part.get("summary", ""))
            for part in (policy, schedule)
            if isinstance(part, dict) and part.get("summary")
        )
        found.append(
            _Occurrence(
                start, end, frozenset({email.strip().lower()}), one_line(summary, 200), level
            )
        )
    return found


def _from_iso(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return _as_utc(moment)


class _OnCalls:
    """One PagerDuty source's on-calls, fetched again once older than ``max_age``."""

    def __init__(
        self, source: OncallSource, fetch: Callable[[OncallSource], list[dict[str, Any]]]
    ) -> None:
        self.source = source
        self._fetch = fetch
        self._lock = threading.Lock()
        self._found: list[_Occurrence] = []
        self._fetched = -1e18
        self._failure = _Feed(source, lambda _: b"")  # its once-a-minute warning

    def occurrences(self) -> list[_Occurrence]:
        with self._lock:
            if time.monotonic() - self._fetched <= self.source.max_age.total_seconds():
                return self._found
            self._found = []  # a stale copy is never used
            self._failure.not_failing_lately()
            try:
                entries = self._fetch(self.source)
            except SourceUnavailable as exc:
                self._failure.failed(str(exc))
                raise
            self._found = _pagerduty_occurrences(
                self.source, entries, datetime.now(UTC).replace(microsecond=0)
            )
            self._fetched = time.monotonic()
            return self._found


class Schedules:
    """The look-up a decision calls: ``shift(source, email, now)``."""

    def __init__(
        self,
        sources: list[OncallSource],
        fetch: Callable[[OncallSource], bytes] = fetch_feed,
        fetch_pagerduty: Callable[[OncallSource], list[dict[str, Any]]] = fetch_oncalls,
    ) -> None:
        self._feeds = {s.name: _Feed(s, fetch) for s in sources if s.pagerduty is None}
        self._oncalls = {
            s.name: _OnCalls(s, fetch_pagerduty) for s in sources if s.pagerduty is not None
        }
        # per source: the calendar expanded, the window it was expanded for, its shifts
        self._expanded: dict[str, tuple[Any, datetime, datetime, list[_Occurrence]]] = {}
        self._lock = threading.Lock()

    def shift(self, source: str, email: str | None, now: datetime) -> Shift | None:
        """The shift of ``email`` in ``source`` at ``now`` (the one ending last when
        several overlap), or None: not on call, no email, or the source unavailable."""
        if not email:
            return None
        feed, oncalls = self._feeds.get(source), self._oncalls.get(source)
        try:
            if feed is not None:
                occurrences = self._occurrences(feed, feed.calendar(), now)
                level = feed.source.level
            elif oncalls is not None:
                occurrences, level = oncalls.occurrences(), 0
            else:
                return None
        except SourceUnavailable:
            return None
        who = email.strip().lower()
        best: _Occurrence | None = None
        for item in occurrences:
            if who in item.attendees and item.start <= now < item.end:
                # the lowest level first (the first to be paged), then the latest end
                if best is None or (item.level or 0, -item.end.timestamp()) < (
                    best.level or 0,
                    -best.end.timestamp(),
                ):
                    best = item
        if best is None:
            return None
        return Shift(source, best.level or level, best.start, best.end, best.summary)

    def _occurrences(self, feed: _Feed, calendar: Any, now: datetime) -> list[_Occurrence]:
        """The shifts around ``now``, expanded once per copy of the calendar and window
        (a copy lives max_age at most, so the window spans that and a day either side:
        the library's window test can be an hour off for a shift across a DST change)."""
        with self._lock:
            cached = self._expanded.get(feed.source.name)
            if cached is not None and cached[0] is calendar and cached[1] <= now < cached[2]:
                return cached[3]
        import recurring_ical_events

        since, until = now - _MARGIN, now + feed.source.max_age + _MARGIN
        try:
            events = recurring_ical_events.of(calendar).between(since, until)
            found = [
                _Occurrence(
                    _as_utc(event.start),  # DTEND or DURATION
                    _as_utc(event.end),
                    frozenset(_attendees(event)),
                    one_line(str(event.get("SUMMARY", "")), 200),
                )
                for event in events
            ]
        except Exception as exc:  # a malformed rule in the feed: treated as unavailable
            feed._log_failure(f"its events cannot be expanded ({type(exc).__name__})")
            raise SourceUnavailable("expansion") from None
        with self._lock:
            self._expanded[feed.source.name] = (calendar, since + _MARGIN, until - _MARGIN, found)
        return found
