"""Rotating the provisioner's password — the broker's only long-lived secret.

The provisioner changes its *own* password (no admin needed), sending only a hash, and
the new password is written where the configuration points (a 0600 file). The order
keeps a crash recoverable: the new password is first written to ``<file>.new``, then
changed in the database, then moved over the old file. If the broker dies between the
last two steps, ``<file>.new`` holds the password in force — and the next rotation (or
``rotate-credential``) first settles it: it logs in with the staged password and keeps it
if the database takes it, before anything else. A change whose answer is lost (a timeout
after the database may have applied it) keeps ``<file>.new`` the same way, unless the old
password still logs in. One process rotates a file at a time (a lock beside it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import ModuleType

from dbaccess.broker.secrets import new_password
from dbaccess.broker.settings import TargetSection
from dbaccess.errors import ConfigError, DatabaseError

log = logging.getLogger(__name__)


def rotate(name: str, target: TargetSection, *, only_if_due: timedelta | None = None) -> bool:
    """A new provisioner password, in the database and its file; False when, under the
    lock, it is found not due after all (another process rotated it first)."""
    file = target.provisioner.password_file
    if file is None:
        raise ConfigError(
            f"target '{name}' reads its provisioner password from "
            f"${target.provisioner.password_env}; rotation needs password_file",
            hint=f'set provisioner = {{ user = "...", password_file = "{name}.pw" }}',
        )
    with _locked(file):
        _settle_staged(name, target)
        if only_if_due is not None and not due(target, only_if_due):
            return False
        secret = target.provisioner.password
        old = target.provisioner.read_password()
        new = new_password()
        secret.stage(new)
        try:
            _admin(target).change_own_password(name, target, old, new)
        except BaseException:
            # the change may have been applied before the failure (its answer lost): the
            # staged password is dropped only when the old one is known to be in force
            if _admin(target).logs_in(name, target, old) is True:
                secret.discard_staged()
            raise
        secret.commit_staged()
    return True


def _settle_staged(name: str, target: TargetSection) -> None:
    """A ``<file>.new`` left by a rotation that did not finish: kept if the database takes
    it (that rotation went through there), dropped if the database refuses it."""
    secret = target.provisioner.password
    staged = secret.staged()
    if not staged.exists():
        return
    password = staged.read_text().strip()
    works = _admin(target).logs_in(name, target, password) if password else False
    if works is None:
        raise DatabaseError(
            f"'{name}': {staged} is left from a rotation that did not finish, and the "
            "database cannot be asked now whether it is the password in force; nothing "
            "was changed (retry once the database is reachable)"
        )
    if works:
        secret.commit_staged()
        log.warning("finished an interrupted rotation of the provisioner of '%s'", name)
    else:
        secret.discard_staged()


@contextmanager
def _locked(file: Path) -> Iterator[None]:
    """One rotation at a time for ``file``: every broker process (workers, a replica on the
    same host, an operator's rotate-credential) takes this lock first."""
    lock = file.with_name(file.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def due(target: TargetSection, every: timedelta) -> bool:
    file = target.provisioner.password_file
    if file is None or not file.exists():
        return False
    return time.time() - file.stat().st_mtime >= every.total_seconds()


def _admin(target: TargetSection) -> ModuleType:
    from dbaccess.broker.engines import engine_part

    return engine_part(target.engine, "admin")


__all__ = ["due", "rotate"]
