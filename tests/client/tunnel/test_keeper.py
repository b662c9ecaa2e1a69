"""When the tunnel asks the broker for another session: the pure decision, and the keeper
that applies it (one request for however many connections wait)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from dbaccess.client.session.request import SessionRequest
from dbaccess.client.tunnel.keeper import MAX_MARGIN, Held, SessionKeeper, margin, needs_fresh
from dbaccess.client.tunnel.run import later_request

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@dataclass
class Granted:
    id: str
    expires_at: datetime


def held(length: timedelta, *, obtained: datetime = T0, ended: bool = False) -> Held:
    return Held(Granted("s1", obtained + length), obtained_at=obtained, ended=ended)


def test_no_session_or_an_ended_one_needs_a_fresh_one() -> None:
    assert needs_fresh(None, T0)
    assert needs_fresh(held(timedelta(hours=1), ended=True), T0)


def test_a_session_is_used_until_a_margin_before_its_end() -> None:
    hour = held(timedelta(hours=1))
    assert margin(hour) == MAX_MARGIN  # 60 s, not a quarter of an hour
    assert not needs_fresh(hour, T0 + timedelta(minutes=58, seconds=59))
    assert needs_fresh(hour, T0 + timedelta(minutes=59))
    assert needs_fresh(hour, T0 + timedelta(hours=2))  # long expired


def test_a_short_session_keeps_three_quarters_of_its_life() -> None:
    short = held(timedelta(seconds=8))
    assert margin(short) == timedelta(seconds=2)
    assert not needs_fresh(short, T0 + timedelta(seconds=5))
    assert needs_fresh(short, T0 + timedelta(seconds=6))


def test_a_naive_end_time_is_read_as_utc() -> None:
    naive = Held(Granted("s1", (T0 + timedelta(hours=1)).replace(tzinfo=None)), obtained_at=T0)
    assert not needs_fresh(naive, T0 + timedelta(minutes=30))


@given(
    length=st.integers(min_value=1, max_value=366 * 86400),
    at=st.integers(min_value=0, max_value=2 * 366 * 86400),
)
def test_never_handed_out_after_its_end_and_always_for_most_of_its_life(
    length: int, at: int
) -> None:
    h = held(timedelta(seconds=length))
    now = T0 + timedelta(seconds=at)
    if at >= length:
        assert needs_fresh(h, now)
    if at < length * 3 / 4 and length - at > MAX_MARGIN.total_seconds():
        assert not needs_fresh(h, now)


def test_concurrent_connections_share_one_new_session() -> None:
    calls: list[int] = []
    clock = [T0]

    def obtain() -> Granted:
        calls.append(1)
        return Granted(f"s{len(calls)}", clock[0] + timedelta(minutes=10))

    keeper = SessionKeeper(obtain, clock=lambda: clock[0])

    async def main() -> list[str]:
        got = await asyncio.gather(*(keeper.session() for _ in range(5)))
        return [h.id for h in got]

    assert asyncio.run(main()) == ["s1"] * 5
    assert len(calls) == 1
    clock[0] += timedelta(minutes=9, seconds=30)  # within the margin: a fresh one
    assert asyncio.run(keeper.session()).id == "s2"
    first = keeper.obtained[1]
    keeper.ended(first)  # the gateway refused it (revoked)
    assert asyncio.run(keeper.session()).id == "s3"
    assert [h.id for h in keeper.obtained] == ["s1", "s2", "s3"]  # all revoked at the end


def test_a_failed_request_leaves_the_next_connection_to_ask_again() -> None:
    answers: list[Exception | Granted] = [
        RuntimeError("broker down"),
        Granted("s1", T0 + timedelta(hours=1)),
    ]

    def obtain() -> Granted:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    keeper = SessionKeeper(obtain, clock=lambda: T0)

    async def twice() -> str:
        try:
            await keeper.session()
        except RuntimeError:
            pass
        return (await keeper.session()).id

    assert asyncio.run(twice()) == "s1"


def test_later_sessions_keep_the_terms_but_not_the_spent_request() -> None:
    first = SessionRequest(
        target="vault",
        role="readonly",
        duration=timedelta(hours=1),
        ticket="JIRA-1",
        request_id="7b1e0000-0000-0000-0000-000000000000",
    )
    later = later_request(first, "asked on the terminal")
    assert later.request_id is None and later.wait is False
    assert (later.target, later.role, later.duration, later.ticket) == (
        "vault", "readonly", timedelta(hours=1), "JIRA-1"
    )  # fmt: skip
    assert later.reason == "asked on the terminal"
    assert later_request(first.with_reason("given"), None).reason == "given"
