"""Starting a sandbox server: its output in a log, and a failed start that says why."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dbaccess.sandbox.processes import (
    ServiceError,
    end_process,
    spawn_logged,
    wait_started,
    wait_until,
)

# Thirty lines of start-up chatter, then the reason, on stderr, and an exit.
FAILING = (
    "import sys\n"
    "for i in range(30): print(f'chatter {i}', flush=True)\n"
    "sys.exit('bad config: port 5432 is taken')\n"
)


def test_a_server_that_exits_at_start_fails_with_the_tail_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    process = spawn_logged([sys.executable, "-c", FAILING], log)
    stopped: list[int | None] = []
    with pytest.raises(ServiceError) as failure:
        wait_started(
            process,
            lambda: False,
            timeout=20,
            what="the server",
            log_path=log,
            stop=lambda: stopped.append(process.poll()),
        )
    message = str(failure.value)
    assert message.startswith("the server exited at start; log tail:\n")
    # stderr went to the log too, and only its last twenty lines are shown
    assert message.endswith("chatter 29\nbad config: port 5432 is taken")
    assert "chatter 11\n" in message and "chatter 10\n" not in message
    assert stopped == [1]


def test_a_server_that_never_gets_ready_is_stopped(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    code = "import sys, time; print('stdin:', repr(sys.stdin.read()), flush=True); time.sleep(60)"
    process = spawn_logged([sys.executable, "-c", code], log, cwd=tmp_path)
    try:
        wait_until(lambda: "stdin" in log.read_text(), timeout=20, what="python")
        with pytest.raises(ServiceError) as failure:
            wait_started(
                process,
                lambda: False,
                timeout=1,
                what="the server",
                log_path=log,
                stop=lambda: end_process(process, timeout=5),
            )
        assert process.poll() is not None
        # stdin is closed (reads end at once), so a server never waits on a terminal
        assert str(failure.value) == (
            "the server did not become ready within 1s; log tail:\nstdin: ''"
        )
    finally:
        end_process(process, timeout=5)


def test_a_ready_server_keeps_running_and_logging(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"an earlier run\n")
    code = "import time; print('listening', flush=True); time.sleep(60)"
    process = spawn_logged([sys.executable, "-c", code], log)
    try:
        wait_started(
            process,
            lambda: "listening" in log.read_text(),
            timeout=20,
            what="the server",
            log_path=log,
            stop=lambda: end_process(process),
        )
        assert process.poll() is None
        assert log.read_text() == "an earlier run\nlistening\n"  # appended, not replaced
    finally:
        end_process(process, timeout=5)
