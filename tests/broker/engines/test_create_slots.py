"""CreateSlots: at most `create_concurrency` users being created at once on one target;
the rest wait, and one that waits too long fails with a message naming the setting."""

from __future__ import annotations

import threading
import time

import pytest

from dbaccess.broker.engines.base import CreateSlots, EngineError


def test_no_more_than_the_limit_run_at_once() -> None:
    slots, lock = CreateSlots("demo", 2), threading.Lock()
    running, most = 0, 0

    def create() -> None:
        nonlocal running, most
        with slots.hold():
            with lock:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with lock:
                running -= 1

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 2 and running == 0


def test_a_slot_is_given_back_when_the_creation_fails() -> None:
    slots = CreateSlots("demo", 1)
    with pytest.raises(RuntimeError), slots.hold():
        raise RuntimeError("the database refused")
    with slots.hold():  # would wait WAIT_SECONDS and fail if the slot had leaked
        pass


def test_waiting_too_long_is_an_engine_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(CreateSlots, "WAIT_SECONDS", 0.05)
    slots = CreateSlots("demo", 1)
    with slots.hold(), pytest.raises(EngineError) as caught, slots.hold():
        pass
    assert "target 'demo' is busy" in str(caught.value)
    assert "create_concurrency" in str(caught.value)
