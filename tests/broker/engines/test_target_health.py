"""The per-target circuit breaker (engines/health.py), on a fake clock: refused at once
within the window after a failure to answer, one probe at a time after it, closed by any
answer."""

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


def test_within_the_window_after_a_failure_every_call_is_refused() -> None:
    clock = Clock()
    health = TargetHealth("t", window=5.0, clock=clock)
    health.failed("no answer within 10 s")
    clock.now += 4.9
    verdicts = [health.admit() for _ in range(20)]
    assert all(isinstance(v, Down) for v in verdicts)
    down = verdicts[0]
    assert isinstance(down, Down)
    assert down.reason == "no answer within 10 s"
    assert round(down.seconds_ago, 1) == 4.9 and round(down.retry_in, 1) == 0.1
    assert health.down


def test_after_the_window_one_probe_at_a_time_goes_through() -> None:
    clock = Clock()
    health = TargetHealth("t", window=5.0, clock=clock)
    health.failed("refused")
    clock.now += 5.0
    verdicts = [health.admit() for _ in range(20)]
    probes = [v for v in verdicts if isinstance(v, Admission)]
    assert len(probes) == 1 and probes[0].probe  # 19 of 20 refused
    assert isinstance(verdicts[0], Admission)  # the first one probes
    probes[0].release()  # it failed to answer as well: the window starts again
    health.failed("refused")
    assert isinstance(health.admit(), Down)
    clock.now += 5.0
    probe = admitted(health.admit())
    assert probe.probe
    health.answered()  # it came back
    probe.release()
    assert not health.down
    assert not any(admitted(health.admit()).probe for _ in range(5))


def test_a_probe_released_without_an_answer_lets_the_next_one_go() -> None:
    clock = Clock()
    health = TargetHealth("t", window=5.0, clock=clock)
    health.failed("refused")
    clock.now += 6
    first = admitted(health.admit())
    assert isinstance(health.admit(), Down)
    first.release()  # e.g. the request was refused by a cap before reaching the target
    first.release()  # twice is harmless
    assert admitted(health.admit()).probe


def test_a_probe_that_never_reports_lapses() -> None:
    clock = Clock()
    health = TargetHealth("t", window=5.0, probe_lapse=15.0, clock=clock)
    health.failed("refused")
    clock.now += 6
    assert admitted(health.admit()).probe  # never released
    clock.now += 14
    assert isinstance(health.admit(), Down)
    clock.now += 1.5
    assert admitted(health.admit()).probe


def test_the_outage_is_timed_from_its_first_failure() -> None:
    clock = Clock()
    health = TargetHealth("t", window=5.0, clock=clock)
    health.failed("a")
    clock.now += 30
    health.failed("b")  # a ping failing again restarts the window, not the outage
    clock.now += 1
    down = health.admit()
    assert isinstance(down, Down)
    assert round(down.seconds_ago) == 31 and down.reason == "b"
    assert round(down.retry_in) == 4
