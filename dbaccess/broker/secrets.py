"""The broker's secrets, read and written in one place: the provisioner password of each
target and the store's password. The configuration never holds a secret itself, only
where it is — an environment variable or a file — and the value is read when it is used,
so a rotated file takes effect without a restart. Files the broker writes (a generated
password, a rotation's staged one) are created 0600 and never overwritten in place; a
generated one appears whole, even when several processes start at once."""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dbaccess.errors import ConfigError


@dataclass(frozen=True)
class SecretRef:
    """Where one secret is: ``env`` (a variable's name) or ``file``. ``what`` names it
    in errors ("the provisioner password of user dbaccess_provisioner")."""

    what: str
    env: str | None = None
    file: Path | None = None

    def read(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(
                    f"environment variable {self.env} ({self.what}) is not set",
                    hint=f"export {self.env}=... before starting the broker",
                )
            return value
        if self.file is None:
            raise ConfigError(f"{self.what} has no password_env or password_file")
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {self.what} from {self.file}: {exc.strerror}",
                hint="it must be a file readable by the user the broker or gateway runs as",
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"{self.what} in {self.file} is not UTF-8 text",
                hint="write the secret as text on one line",
            ) from None

    def ensure(self) -> str:
        """The secret, first generating a random one into a missing ``file`` (0600).

        Processes starting together (a broker and its gateways, or several gateways) may
        all find the file missing: the first link wins and every one reads its value."""
        if self.file is None:
            return self.read()
        if not self.file.exists():
            self.file.parent.mkdir(parents=True, exist_ok=True)
            _create_complete(self.file, new_password())
        value = self.read()
        if not value:
            raise ConfigError(
                f"{self.file} ({self.what}) is empty",
                hint="delete it to have a new one generated, or write the secret into it",
            )
        return value

    # A rotation: the new password is staged next to the file, set in the database, and
    # only then moved over the file. If the broker dies between the last two steps, the
    # staged file holds the password in force (dbaccess/broker/rotation.py).
    def staged(self) -> Path:
        if self.file is None:
            raise ConfigError(f"{self.what} is read from ${self.env}; rotation needs a file")
        return self.file.with_name(self.file.name + ".new")

    def stage(self, value: str) -> None:
        staged = self.staged()
        staged.unlink(missing_ok=True)
        _write_new(staged, value)

    def discard_staged(self) -> None:
        self.staged().unlink(missing_ok=True)

    def commit_staged(self) -> None:
        assert self.file is not None
        self.staged().replace(self.file)


def new_password() -> str:
    return secrets.token_urlsafe(32)


def _create_complete(path: Path, value: str) -> None:
    """Create ``path`` holding ``value``, or leave the one another process made first.

    Written whole to a private temporary file next to it, then linked into place: nobody
    ever sees the file empty or half-written, and a link never replaces an existing one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp: 0600
            handle.write(value + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won; ensure() reads its value
    finally:
        os.unlink(temporary)


def _write_new(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
