"""The sandbox's private Secret Service: a real bus and gnome-keyring-daemon, nothing shared.

Never skipped: without dbus-daemon / gnome-keyring-daemon (packages dbus, gnome-keyring)
``start`` raises ServiceError and the test fails, locally and in CI alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dbaccess.sandbox.secret_service import SecretService

WRITE = """
import keyring
print(keyring.get_keyring().__class__.__module__, keyring.get_keyring().__class__.__name__)
keyring.set_password("dbaccess-test", "alice", "s3cret-from-process-one")
"""

READ_AND_DELETE = """
import keyring
print(keyring.get_password("dbaccess-test", "alice"))
keyring.delete_password("dbaccess-test", "alice")
print(keyring.get_password("dbaccess-test", "alice"))
"""

# Without PYTHON_KEYRING_BACKEND, as the real CLI runs: keyring must find the service itself.
DETECT = """
import keyring
from keyring.backends import SecretService, chainer
chosen = keyring.get_keyring()
if isinstance(chosen, chainer.ChainerBackend):  # e.g. keyrings.alt installed beside it
    chosen = chosen.backends[0]
print(type(chosen).__module__, SecretService.Keyring.priority)
"""


def run_child(env: dict[str, str], code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def processes_using(workdir: Path) -> list[int]:
    """Pids of live processes whose environment or command line mentions ``workdir``."""
    needle = os.fsencode(workdir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in seen:
            found.append(int(entry.name))
    return found


def test_secret_service_round_trips_between_processes_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "ss"
    service = SecretService(workdir)
    started = time.monotonic()
    try:
        service.start(timeout=20)
        startup = time.monotonic() - started
        pids = service.pids
        assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)

        env = {**os.environ, **service.env}
        assert run_child(env, WRITE) == "keyring.backends.SecretService Keyring"
        assert run_child(env, READ_AND_DELETE) == "s3cret-from-process-one\nNone"

        detect_env = {k: v for k, v in env.items() if k != "PYTHON_KEYRING_BACKEND"}
        assert run_child(detect_env, DETECT) == "keyring.backends.SecretService 5"

        # the keyring file is the private one, never the real user's
        assert (workdir / "data" / "keyrings" / "login.keyring").is_file()
        assert all(
            value.startswith(str(workdir))
            for key, value in service.env.items()
            if key in ("HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
        )
    finally:
        service.stop()

    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} outlived stop()"
    assert processes_using(workdir) == []
    assert service.pids == ()
    service.stop()  # idempotent
    assert startup < 5, f"startup took {startup:.1f}s"
