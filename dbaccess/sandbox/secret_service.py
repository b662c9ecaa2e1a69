"""A private, real Secret Service: a D-Bus session bus plus gnome-keyring-daemon.

Everything lives in the work directory (bus socket, keyring files, HOME), so tests and the
sandbox never touch the real user's keyring or session bus:

    workdir/bus                   the bus socket (DBUS_SESSION_BUS_ADDRESS)
    workdir/bus.conf              the bus's configuration (no service activation)
    workdir/run/keyring/control   gnome-keyring's control socket (XDG_RUNTIME_DIR)
    workdir/data/keyrings/        the keyring files (XDG_DATA_HOME)
    workdir/keyring-password      the login keyring's password, so a restart unlocks it again
    workdir/secret-service.log    both daemons' output

The ``login`` collection is created (first start) or opened, and unlocked, by piping the
password to ``gnome-keyring-daemon --unlock``; it is the ``default`` alias, so ``keyring``
stores into it without any prompt (there is no display to show one on).

The bus is started from our own configuration rather than ``--session``: the stock session
configuration makes ``org.freedesktop.secrets`` D-Bus-activatable, and any client that asks
for it before our daemon has claimed the name would make dbus-daemon launch a second,
locked gnome-keyring-daemon that we neither unlocked nor can stop by pid. Without service
directories nothing is ever activated: every process on this bus is one we started.
"""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from xml.sax.saxutils import escape as xml_escape

from dbaccess.sandbox.processes import ServiceError, find_binary

SECRETS_BUS_NAME = "org.freedesktop.secrets"
_SERVICE_PATH = "/org/freedesktop/secrets"
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, one of them the terminating NUL
_ENV_DROPPED = ("DBUS_STARTER_ADDRESS", "DBUS_STARTER_BUS_TYPE", "GNOME_KEYRING_CONTROL")

_BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <!-- A private session bus for dbaccess's tests and sandbox. Deliberately no
       <standard_session_servicedirs/> and no <servicedir>: nothing is activated. -->
  <type>session</type>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def dbus_address_escape(value: str) -> str:
    """Escape ``value`` for use inside a D-Bus address (unix:path=...)."""
    safe = set("-_/.\\*") | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    return "".join(ch if ch in safe else "".join(f"%{b:02x}" for b in ch.encode()) for ch in value)


class SecretService:
    """A private D-Bus session bus with gnome-keyring-daemon's secrets component, unlocked."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.absolute()  # servers change directory; paths must not be relative
        self.log_path = self.workdir / "secret-service.log"
        self.socket_path = self.workdir / "bus"
        self.bus_address = f"unix:path={dbus_address_escape(str(self.socket_path))}"
        self._bus: subprocess.Popen[bytes] | None = None
        self._keyring: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to use this Secret Service through ``keyring``.

        HOME and the XDG directories point inside the work directory too, so neither the
        keyring files nor keyring's own configuration (keyringrc.cfg) are the real user's.
        """
        return {
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
            "XDG_RUNTIME_DIR": str(self.workdir / "run"),
            "XDG_DATA_HOME": str(self.workdir / "data"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
            "HOME": str(self.workdir / "home"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.SecretService.Keyring",
        }

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the daemons started and not yet stopped (bus last)."""
        return tuple(p.pid for p in (self._keyring, self._bus) if p is not None)

    @property
    def running(self) -> bool:
        return self._bus is not None

    def start(self, timeout: float = 20) -> None:
        """Start the bus and the keyring daemon; return once ``login`` is the unlocked default."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        dbus_daemon = find_binary("dbus-daemon")
        keyring_daemon = find_binary("gnome-keyring-daemon")
        self._check_socket_paths()
        for name in ("run", "data", "config", "home"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
            os.chmod(self.workdir / name, 0o700)  # private, as XDG_RUNTIME_DIR must be
        config = self.workdir / "bus.conf"
        config.write_text(_BUS_CONFIG.format(listen=xml_escape(self.bus_address)))
        self.socket_path.unlink(missing_ok=True)  # left over by a killed run: bind would fail
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROPPED} | self.env
        with self.log_path.open("ab") as log:
            try:
                self._bus = subprocess.Popen(
                    [
                        dbus_daemon,
                        f"--config-file={config}",
                        "--nofork",
                        "--nopidfile",
                        "--print-address=1",
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
                self._wait_for_bus(deadline)
                self._keyring = subprocess.Popen(
                    [keyring_daemon, "--foreground", "--unlock", "--components=secrets"],
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
                assert self._keyring.stdin is not None
                self._keyring.stdin.write(self._password().encode())
                self._keyring.stdin.close()  # --unlock reads the password up to end of file
                self._wait_for_login_collection(deadline)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop the keyring daemon, then the bus. Idempotent; leaves no process behind."""
        keyring_process, self._keyring = self._keyring, None
        bus_process, self._bus = self._bus, None
        _end_group(keyring_process)
        _end_group(bus_process)

    def __enter__(self) -> SecretService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------

    def _check_socket_paths(self) -> None:
        for path in (self.socket_path, self.workdir / "run" / "keyring" / "control"):
            if len(os.fsencode(path)) > _SOCKET_PATH_MAX:
                raise ServiceError(
                    f"work directory {self.workdir} is too long for a unix socket path "
                    f"({path}); use a shorter one"
                )

    def _password(self) -> str:
        """The login keyring's password: made once, kept so a restart can unlock it again."""
        path = self.workdir / "keyring-password"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(24))
        return path.read_text()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _fail(self, what: str) -> ServiceError:
        return ServiceError(f"{what}; log {self.log_path}:\n{self._log_tail()}")

    def _wait_for_bus(self, deadline: float) -> None:
        """dbus-daemon prints its address once it listens: that line is the readiness signal."""
        assert self._bus is not None and self._bus.stdout is not None
        line = _read_line(self._bus.stdout, deadline)
        self._bus.stdout.close()
        if not line.startswith(b"unix:"):
            raise self._fail(f"dbus-daemon did not start (printed {line!r})")

    def _wait_for_login_collection(self, deadline: float) -> None:
        state = "the keyring daemon did not claim " + SECRETS_BUS_NAME
        with _connect(self.bus_address) as bus:
            while True:
                if self._keyring is None or _exited(self._keyring):
                    raise self._fail("gnome-keyring-daemon exited while starting")
                if _name_has_owner(bus, SECRETS_BUS_NAME):
                    path = _default_collection(bus)
                    if path == "/":
                        state = "the keyring daemon has no default collection"
                    elif _collection_locked(bus, path):
                        state = (
                            f"the default collection {path} is locked (was "
                            f"{self.workdir / 'keyring-password'} changed or removed?)"
                        )
                    else:
                        return
                if time.monotonic() >= deadline:
                    raise self._fail(f"the Secret Service was not ready in time: {state}")
                time.sleep(0.02)


# -- D-Bus, through jeepney (keyring's own dependency on Linux) -----------------------------


class _Bus:
    def __init__(self, address: str) -> None:
        from jeepney.io.blocking import open_dbus_connection

        self.connection: Any = open_dbus_connection(bus=address)

    def __enter__(self) -> _Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.connection.close()

    def call(self, message: Any) -> tuple[Any, ...]:
        from jeepney import MessageType

        reply = self.connection.send_and_get_reply(message, timeout=5)
        if reply.header.message_type == MessageType.error:
            raise ServiceError(f"D-Bus error {reply.header.fields}: {reply.body}")
        return tuple(reply.body)


def _connect(address: str) -> _Bus:
    return _Bus(address)


def _name_has_owner(bus: _Bus, name: str) -> bool:
    from jeepney.bus_messages import message_bus

    return bool(bus.call(message_bus.NameHasOwner(name))[0])


def _default_collection(bus: _Bus) -> str:
    from jeepney import DBusAddress, new_method_call

    service = DBusAddress(
        _SERVICE_PATH, bus_name=SECRETS_BUS_NAME, interface="org.freedesktop.Secret.Service"
    )
    return str(bus.call(new_method_call(service, "ReadAlias", "s", ("default",)))[0])


def _collection_locked(bus: _Bus, path: str) -> bool:
    from jeepney import DBusAddress, Properties

    collection = DBusAddress(
        path, bus_name=SECRETS_BUS_NAME, interface="org.freedesktop.Secret.Collection"
    )
    _signature, value = bus.call(Properties(collection).get("Locked"))[0]
    return bool(value)


# -- processes -------------------------------------------------------------------------------


def _read_line(stream: IO[bytes], deadline: float) -> bytes:
    """Read one line from a pipe, giving up (with what came so far) at ``deadline``."""
    data = b""
    fd = stream.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:  # the daemon exited
                break
            data += chunk
    return data.strip()


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether ``process`` has exited, without reaping it: its pid (and so its process
    group's id) stays reserved until we wait for it, so signalling the group stays safe."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.returncode is not None:
        return  # reaped: its pid may belong to someone else by now
    try:
        os.killpg(process.pid, sig)  # start_new_session made the daemon its group's leader
    except (ProcessLookupError, PermissionError):
        pass


def _end_group(process: subprocess.Popen[bytes] | None, timeout: float = 5) -> None:
    """SIGTERM the daemon's process group, SIGKILL what is left after ``timeout``, reap it."""
    if process is None:
        return
    for stream in (process.stdin, process.stdout):
        if stream is not None and not stream.closed:
            stream.close()
    _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _exited(process) and time.monotonic() < deadline:
        time.sleep(0.01)
    _signal_group(process, signal.SIGKILL)  # stragglers in the group, or a hung daemon
    process.wait()
