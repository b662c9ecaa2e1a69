"""One timestamp format in JSON, one in human output (dbaccess/timestamps.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from dbaccess.errors import AuthError
from dbaccess.timestamps import human, json_ready, rfc3339


def test_every_form_of_a_time_becomes_rfc3339_utc() -> None:
    moment = datetime(2026, 12, 2, 1, 20, 31, 123456, tzinfo=UTC)
    assert rfc3339(moment) == "2026-12-02T01:20:31Z"
    assert rfc3339(moment.timestamp()) == "2026-12-02T01:20:31Z"  # a token's epoch expiry
    assert human(moment) == "2026-12-02 01:20:31 UTC"
    paris = moment.astimezone(timezone(timedelta(hours=1)))
    payload = {
        "expires_at": "2026-12-02T01:20:31.123456Z",  # pydantic
        "detail": {
            "requested_until": "2026-12-02 01:20:31+00:00",  # str() in audit details
            "at": paris.isoformat(),
            "when": [moment],
        },
        "reason": "2026-12-02 is not a time",
        "day": "2026-12-02",
        "n": 3.5,
        "note": "2026-12-02 10:00:00+02:00",  # typed by a person: kept as typed
    }
    assert json_ready(payload) == {
        "expires_at": "2026-12-02T01:20:31Z",
        "detail": {
            "requested_until": "2026-12-02T01:20:31Z",
            "at": "2026-12-02T01:20:31Z",
            "when": ["2026-12-02T01:20:31Z"],
        },
        "reason": "2026-12-02 is not a time",
        "day": "2026-12-02",
        "n": 3.5,
        "note": "2026-12-02 10:00:00+02:00",
    }


def test_hints_name_the_profile_in_every_command_they_give() -> None:
    error = AuthError(
        "session expired — run dbaccess login",
        hint="dbaccess login, then dbaccess targets; dbaccess-broker is not ours; "
        "dbaccess --profile x whoami is already explicit",
    )
    error.name_profile("prod")
    assert error.message == "session expired — run dbaccess --profile prod login"
    assert error.hint == (
        "dbaccess --profile prod login, then dbaccess --profile prod targets; "
        "dbaccess-broker is not ours; dbaccess --profile x whoami is already "
        "explicit"
    )
    unchanged = AuthError("m", hint="dbaccess login")
    unchanged.name_profile(None)
    assert unchanged.hint == "dbaccess login"
