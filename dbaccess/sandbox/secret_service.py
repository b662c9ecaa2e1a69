"""A private, real Secret Service: a D-Bus session bus plus gnome-keyring-daemon.

Everything lives in the work directory (bus socket, keyring files, HOME), so tests never
touch the real user's keyring. The ``login`` collection is created and unlocked by piping
a password to ``gnome-keyring-daemon --unlock``, so no prompt is ever shown.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from dbaccess.sandbox.processes import ServiceError, end_process, find_binary, wait_until


class SecretService:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.absolute()  # servers change directory; paths must not be relative
        self._bus: subprocess.Popen[bytes] | None = None
        self._keyring: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "secret-service.log"

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to use this Secret Service through ``keyring``."""
        return {
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.workdir / 'bus'}",
            "XDG_RUNTIME_DIR": str(self.workdir / "run"),
            "XDG_DATA_HOME": str(self.workdir / "data"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "HOME": str(self.workdir / "home"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring",
        }

    def start(self, timeout: float = 20) -> None:
        for name in ("run", "data", "config", "home"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**os.environ, **self.env}
        log = self.log_path.open("ab")
        try:
            self._bus = subprocess.Popen(
                [
                    find_binary("dbus-daemon"),
                    "--session",
                    "--nofork",
                    "--nopidfile",
                    f"--address={env['DBUS_SESSION_BUS_ADDRESS']}",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            wait_until(
                lambda: (self.workdir / "bus").exists(),
                timeout=timeout,
                what="the D-Bus session bus",
            )
            self._keyring = subprocess.Popen(
                [
                    find_binary("gnome-keyring-daemon"),
                    "--foreground",
                    "--unlock",
                    "--components=secrets",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
            )
            assert self._keyring.stdin is not None
            self._keyring.stdin.write(secrets.token_urlsafe(16).encode())
            self._keyring.stdin.close()
            wait_until(
                lambda: self._collection_ready(env),
                timeout=timeout,
                what="gnome-keyring's Secret Service",
                interval=0.2,
            )
        except BaseException:
            self.stop()
            raise
        finally:
            log.close()

    def _collection_ready(self, env: dict[str, str]) -> bool:
        if self._keyring is not None and self._keyring.poll() is not None:
            raise ServiceError(f"gnome-keyring-daemon exited:\n{self.log_path.read_text()}")
        probe = subprocess.run(
            [find_binary("secret-tool"), "search", "--all", "dbaccess-probe", "x"],
            env=env,
            capture_output=True,
            timeout=5,
        )
        return probe.returncode in (0, 1) and b"locked" not in probe.stderr.lower()

    def stop(self) -> None:
        for attr in ("_keyring", "_bus"):
            process: subprocess.Popen[bytes] | None = getattr(self, attr)
            setattr(self, attr, None)
            end_process(process, timeout=5)

    def __enter__(self) -> SecretService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
