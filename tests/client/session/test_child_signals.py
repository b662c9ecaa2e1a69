"""Signal handling around a session run, as a process that runs the CLI in-process sees it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from dbaccess.client.session.child import cleanup_on_signals, ignore_cleanup_signals


def test_ctrl_c_comes_back_after_the_clean_up_set_it_aside() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with cleanup_on_signals():
        ignore_cleanup_signals()  # what run_granted does before revoking
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    # The in-process tests once left Ctrl-C ignored for the rest of the run this way.
    assert {sig: signal.getsignal(sig) for sig in before} == before


SECOND_SIGNAL = """
import os, signal, sys
from dbaccess.client.session.child import Terminated, cleanup_on_signals, ignore_cleanup_signals
first, second = signal.SIGTERM, getattr(signal, sys.argv[1])
cleaned = False
try:
    with cleanup_on_signals():
        try:
            # both pending at once: the second is run as the first unwinds, in the finally
            signal.pthread_sigmask(signal.SIG_BLOCK, {first, second})
            os.kill(os.getpid(), first)
            os.kill(os.getpid(), second)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {first, second})
            for _ in range(1000):
                pass
        finally:
            for _ in range(1000):  # bytecodes before ignore_cleanup_signals: where it lands
                pass
            ignore_cleanup_signals()
            cleaned = True
except (Terminated, KeyboardInterrupt):
    pass
print("cleaned" if cleaned else "skipped")
"""


# (SIGTERM twice is one pending signal: the kernel does not queue them)
@pytest.mark.parametrize("second", ["SIGHUP", "SIGINT"])
def test_a_second_stop_signal_does_not_skip_the_clean_up(second: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SECOND_SIGNAL, second],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout.strip() == "cleaned", run.stdout + run.stderr
