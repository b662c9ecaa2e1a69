"""The database's Unix socket (``gateway_socket``), as the gateway trusts it. There is no
TLS on a Unix socket to prove who listens there, so the path itself must be one only the
database's own user (or root) can have made: its directory writable by its owner alone,
or by the owner's own group too (Debian's /var/run/postgresql is postgres:postgres 2775),
and the socket owned by the directory's owner or by root. Otherwise another local user
could put a socket of their own there (in /tmp, say, while the database restarts), relay
the session's SCRAM login to the real server and read every statement and result."""

from __future__ import annotations

import os
import pwd
import stat


def untrusted_socket(path: str) -> str | None:
    """Why ``path`` is not a socket to trust, or None (a missing one too: connecting then
    fails with its own error)."""
    directory = os.path.dirname(path) or "."
    try:
        folder = os.stat(directory)
        entry = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} cannot be checked ({exc.strerror})"
    if folder.st_mode & stat.S_IWOTH:
        return f"its directory {directory} is writable by every user"
    if folder.st_mode & stat.S_IWGRP and folder.st_gid != _primary_group(folder.st_uid):
        return f"its directory {directory} is writable by a group other than its owner's own"
    if not stat.S_ISSOCK(entry.st_mode):
        return f"{path} is not a socket"
    if entry.st_uid not in (folder.st_uid, 0):
        return f"{path} belongs to another user than its directory {directory}"
    return None


def _primary_group(uid: int) -> int | None:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None
