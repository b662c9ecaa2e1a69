"""An interactive psql session through a pseudo-terminal, as a person at a keyboard."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import Cli
from tests.terminal import own_terminal, read_until

pytestmark = pytest.mark.integration


def test_interactive_psql_through_a_pty(cli: Cli) -> None:
    controller, terminal = pty.openpty()
    env = {**cli.env, "TERM": "dumb", "PAGER": "cat", "PSQL_PAGER": "cat"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dbaccess", "connect", "demo", "--role", "readonly"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        preexec_fn=own_terminal,
    )
    os.close(terminal)
    try:
        banner = read_until(controller, r"demo=> ")
        user = re.search(r"connected as (dba_alice_[0-9a-f]{10})", banner)
        assert user, banner
        os.write(controller, b"select current_user;\n")
        answer = read_until(controller, r"\(1 row\)")
        assert user.group(1) in answer
        # Ctrl-C goes to psql (it cancels the query), not to dbaccess
        os.write(controller, b"select pg_sleep(30);\n")
        time.sleep(0.5)
        os.write(controller, b"\x03")
        read_until(controller, r"canceling statement|cancel")
        assert process.poll() is None
        os.write(controller, b"\\q\n")
        read_until(controller, r"session revoked")
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(controller)
    assert not cli.role_exists(user.group(1))
    assert list(cli.runtime_dir.iterdir()) == []
