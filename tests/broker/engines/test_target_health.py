"""The per-target circuit breaker (engines/health.py), on a fake clock: while a target is
unreachable one call at a time probes it and the others are refused at once; the reaper's
ping is the probe while it runs; any answer closes the breaker; without news for the window
calls go through again."""

from __future__ import annotations

from dbaccess.broker.engines.health import Admission, Down, TargetHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(verdict: Admission | Down) -> Admission:
    assert isinstance(verdict, Admission), verdict
    return verdict


def test_an_answering_target_lets_every_call_through() -> None:
    health = TargetHealth("t", clock=Clock())
    calls = [admitted(health.admit()) for _ in range(20)]
    assert not any(call.probe for call in calls)
    assert not health.down


def test_an_unreachable_target_lets_one_probe_through_and_refuses_the_rest() -> None:
    clock = Clock()
    health = TargetHealth("t", window=15.0, clock=clock)
    health.failed("no answer within 10 s")
    clock.now += 1
    verdicts = [health.admit() for _ in range(20)]
    assert admitted(verdicts[0]).probe  # the first one probes
    assert all(isinstance(v, Down) for v in verdicts[1:])  # 19 of 20 refused
    down = verdicts[1]
    assert isinstance(down, Down) and down.reason == "no answer within 10 s"
    assert health.down


def test_a_probe_that_fails_lets_the_next_one_go_and_one_that_answers_closes() -> None:
    clock = Clock()
    health = TargetHealth("t", window=15.0, clock=clock)
    health.failed("refused")
    probe = admitted(health.admit())
    health.failed("refused again")  # what its call reported
    probe.release()
    probe.release()  # twice is harmless
    second = admitted(health.admit())
    assert second.probe and isinstance(health.admit(), Down)
    health.answered()  # it came back
    second.release()
    assert not health.down
    assert not any(admitted(health.admit()).probe for _ in range(5))


def test_while_the_reaper_pings_no_caller_probes() -> None:
    clock = Clock()
    health = TargetHealth("t", window=15.0, clock=clock)
    health.failed("refused")
    with health.pinging():
        assert all(isinstance(health.admit(), Down) for _ in range(5))
    assert admitted(health.admit()).probe


def test_a_probe_that_never_reports_lapses() -> None:
    clock = Clock()
    health = TargetHealth("t", window=60.0, probe_lapse=15.0, clock=clock)
    health.failed("refused")
    assert admitted(health.admit()).probe  # never released
    clock.now += 14
    assert isinstance(health.admit(), Down)
    clock.now += 1.5
    assert admitted(health.admit()).probe


def test_without_news_for_the_window_calls_go_through_again() -> None:
    clock = Clock()
    health = TargetHealth("t", window=15.0, clock=clock)
    health.failed("a")
    assert admitted(health.admit()).probe
    clock.now += 15
    assert not any(admitted(health.admit()).probe for _ in range(5))
    assert health.down  # still troubled for the reaper until something answers


def test_the_outage_is_timed_from_its_first_failure() -> None:
    clock = Clock()
    health = TargetHealth("t", window=15.0, probe_lapse=60.0, clock=clock)
    health.failed("a")
    admitted(health.admit())  # a probe under way
    clock.now += 10
    health.failed("b")  # a ping failing again restarts the window, not the outage
    clock.now += 10
    down = health.admit()
    assert isinstance(down, Down)
    assert round(down.seconds_ago) == 20 and down.reason == "b"
