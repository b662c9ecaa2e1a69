"""Signal handling around a session run, as a process that runs the CLI in-process sees it."""

from __future__ import annotations

import signal

from dbaccess.client.session.child import cleanup_on_signals, ignore_cleanup_signals


def test_ctrl_c_comes_back_after_the_clean_up_set_it_aside() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with cleanup_on_signals():
        ignore_cleanup_signals()  # what run_granted does before revoking
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    # The in-process tests once left Ctrl-C ignored for the rest of the run this way.
    assert {sig: signal.getsignal(sig) for sig in before} == before
