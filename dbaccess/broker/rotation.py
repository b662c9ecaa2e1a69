"""Rotating the provisioner's password — the broker's only long-lived secret.

The provisioner changes its *own* password (no admin needed), sending only a hash, and
the new password is written where the configuration points (a 0600 file). The order
keeps a crash recoverable: the new password is first written to ``<file>.new``, then
changed in the database, then moved over the old file. If the broker dies between the
last two steps, ``<file>.new`` holds the password in force.
"""

from __future__ import annotations

import time
from datetime import timedelta

from dbaccess.broker.secrets import new_password
from dbaccess.broker.settings import TargetSection
from dbaccess.errors import ConfigError


def rotate(name: str, target: TargetSection) -> None:
    file = target.provisioner.password_file
    if file is None:
        raise ConfigError(
            f"target '{name}' reads its provisioner password from "
            f"${target.provisioner.password_env}; rotation needs password_file",
            hint=f'set provisioner = {{ user = "...", password_file = "{name}.pw" }}',
        )
    secret = target.provisioner.password
    new = new_password()
    secret.stage(new)
    try:
        _change_own_password(name, target, new)
    except BaseException:
        secret.discard_staged()
        raise
    secret.commit_staged()


def due(target: TargetSection, every: timedelta) -> bool:
    file = target.provisioner.password_file
    if file is None or not file.exists():
        return False
    return time.time() - file.stat().st_mtime >= every.total_seconds()


def _change_own_password(name: str, target: TargetSection, new: str) -> None:
    from dbaccess.broker.engines import engine_part

    old = target.provisioner.read_password()
    engine_part(target.engine, "admin").change_own_password(name, target, old, new)


__all__ = ["due", "rotate"]
