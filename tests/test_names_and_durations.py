from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbaccess.broker.engines.base import NewUser, make_password, make_username
from dbaccess.broker.settings import RoleTemplate
from dbaccess.durations import format_duration, parse_duration, parse_duration_option
from dbaccess.errors import UsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("45", 45)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "soon",
        "1x",
        "-5m",
        "0s",
        "1h 30m",
        "m",
        # beyond a year: once a date overflow, not a clear error
        "367d",
        "8785h",
        "99999999999d",
        "9" * 40,
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_year_is_the_longest_duration() -> None:
    assert parse_duration("366d") == timedelta(days=366)
    with pytest.raises(ValueError, match="longer than 366d"):
        parse_duration("366d1s")


@given(st.integers(1, 10**7))
def test_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(timedelta(seconds=seconds))).total_seconds() == seconds


@given(st.text(max_size=200), st.sampled_from([32, 63]))
def test_usernames_fit_and_are_plain(person: str, limit: int) -> None:
    name = make_username("dba_", person, limit)
    assert len(name.encode()) <= limit
    assert name.startswith("dba_")
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    assert name == name.lower()


def test_long_names_do_not_collide_through_truncation() -> None:
    person = "a" * 100
    assert make_username("dba_", person, 63) != make_username("dba_", person, 63)


def test_new_user_repr_hides_password() -> None:
    password = make_password()
    user = NewUser("dba_x_1", password, RoleTemplate(group_role="g"), None)  # type: ignore[arg-type]
    assert password not in repr(user)
    assert len(password) >= 32


def test_expiry_is_rounded_up_to_a_whole_second() -> None:
    from datetime import UTC, datetime

    from dbaccess.broker.services.issuer import ceil_second

    moment = datetime(2026, 11, 22, 12, 0, 0, 900_000, tzinfo=UTC)
    assert ceil_second(moment) == datetime(2026, 11, 22, 12, 0, 1, tzinfo=UTC)
    whole = datetime(2026, 11, 22, 12, 0, 1, tzinfo=UTC)
    assert ceil_second(whole) == whole


@pytest.mark.parametrize("typed, seconds", [(None, None), ("", None), ("90", 90), ("1h30m", 5400)])
def test_the_duration_option(typed: str | None, seconds: int | None) -> None:
    found = parse_duration_option(typed)
    assert (int(found.total_seconds()) if found else None) == seconds


@pytest.mark.parametrize(
    "typed, message",
    [
        ("soon", "--duration: 'soon' is not a duration; use e.g. 90s, 15m, 1h or 1h30m"),
        ("0m", "--duration: '0m' must be longer than zero"),
        ("400d", "--duration: '400d' is longer than 366d, the longest duration dbaccess takes"),
    ],
)
def test_a_bad_duration_is_a_usage_error_naming_the_option(typed: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_duration_option(typed)
    assert refused.value.message == message
