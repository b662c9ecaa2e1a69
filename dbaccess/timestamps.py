"""The CLI's two forms of a point in time, used by every command and both exec paths:
RFC 3339 in UTC for JSON ("2026-12-02T01:20:31Z") and one human form
("2026-12-02 01:20:31 UTC"). Standard library only (the fast exec path uses it)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

# A string that is unmistakably a point in time: a date, a time and a UTC offset (ISO 8601
# with "T" as pydantic writes it, or with " " as str(datetime) does in audit details).
_TIMESTAMP = re.compile(
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)", re.ASCII
)


def _utc(moment: datetime | float) -> datetime:
    if isinstance(moment, datetime):
        # a naive time here would be a bug upstream; the broker and the models use UTC
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.fromtimestamp(moment, UTC)


def rfc3339(moment: datetime | float) -> str:
    """RFC 3339 in UTC, to the second: "2026-12-02T01:20:31Z" (epoch seconds accepted)."""
    return f"{_utc(moment):%Y-%m-%dT%H:%M:%SZ}"


def human(moment: datetime | float) -> str:
    """The one form people see: "2026-12-02 01:20:31 UTC"."""
    return f"{_utc(moment):%Y-%m-%d %H:%M:%S} UTC"


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for what the broker writes itself (audit details, webhook
    bodies): times as :func:`rfc3339`, anything else as its text."""
    return rfc3339(value) if isinstance(value, datetime) else str(value)


def is_time_key(key: object) -> bool:
    """Keys whose values are points in time, in the models and in what the broker records
    (``at``, ``expires_at``, ``requested_until``, ``previous_expiry``...)."""
    return isinstance(key, str) and (key == "at" or key.endswith(("_at", "_until", "expiry")))


def json_ready(value: Any, key: object = None) -> Any:
    """``value`` with every timestamp in it as :func:`rfc3339`, so a script parses one
    format whatever the command: datetimes anywhere, and strings holding a date, a time
    and an offset under a time key (audit details written before the broker wrote RFC
    3339). Only under such keys: a reason or a note that looks like a time stays as typed."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, str):
        if is_time_key(key) and _TIMESTAMP.fullmatch(value):
            return rfc3339(datetime.fromisoformat(value.replace("Z", "+00:00")))
        return value
    if isinstance(value, dict):
        return {name: json_ready(item, name) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item, key) for item in value]
    return value


# Statement records keep their times as integer nanoseconds since the epoch (exact, and
# cheap to encode); these make datetimes of them, to the microsecond, without a float.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def from_epoch_ns(ns: int) -> datetime:
    """The UTC time ``ns`` nanoseconds after the epoch, to the microsecond."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def to_epoch_ns(moment: datetime) -> int:
    return (moment - EPOCH) // _MICROSECOND * 1000
