"""The tunnel's local secret: what a GUI client on this machine gives the tunnel, instead of
anything the broker or gateway issued.

Random, made once per profile, target and role, and kept in a 0600 file in a 0700
directory under the config directory, so a GUI that saved it keeps working across
sessions, tunnel restarts and reboots, and another user of the machine cannot read it.
It is never the gateway's session secret, which stays in the tunnel's memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from dbaccess.client.config import config_dir
from dbaccess.errors import ConfigError

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def secret_path(profile: str, target: str, role: str) -> Path:
    """Where the secret of this profile's tunnel to ``target`` as ``role`` is kept."""
    parts = (profile, target, role)
    if all(_PLAIN_NAME.fullmatch(part) for part in parts):
        name = "--".join(parts)
    else:  # names are the broker's and the user's: never a path of their choosing
        name = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
    return config_dir() / "tunnel" / f"{name}.secret"


def local_secret(path: Path) -> str:
    """The secret in ``path``, made (random) if there is none yet."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    _check_private(path.parent, 0o077, "directory")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read(path)
    made = secrets.token_urlsafe(24)  # URL-safe ASCII: SASLprep leaves it as it is
    with os.fdopen(fd, "w") as out:
        out.write(made + "\n")
    return made


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the tunnel's secret {path}: {exc.strerror}",
            hint=f"remove it (a new one is made): rm {path}",
        ) from None
    with os.fdopen(fd) as given:
        _check_private(path, 0o077, "file", os.fstat(given.fileno()))
        text = given.read().strip()
    if not text or not text.isascii() or len(text) > 200:
        raise ConfigError(
            f"{path} does not hold a tunnel secret",
            hint=f"remove it (a new one is made): rm {path}",
        )
    return text


def _check_private(path: Path, closed: int, what: str, info: os.stat_result | None = None) -> None:
    info = info or os.lstat(path)
    kind_ok = stat.S_ISDIR(info.st_mode) if what == "directory" else stat.S_ISREG(info.st_mode)
    if not kind_ok or info.st_uid != os.geteuid() or info.st_mode & closed:
        raise ConfigError(
            f"the tunnel's secret {what} {path} is not private to you (mode "
            f"{stat.S_IMODE(info.st_mode):o}); another user may have read it",
            hint=f"remove it (a new secret is made): rm -r {path}",
        )
