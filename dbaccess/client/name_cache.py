"""Names for shell completion, remembered from the last ``dbaccess targets`` and
``dbaccess sessions``: one small JSON file per profile under the user's cache directory
(``DBACCESS_CACHE_DIR`` overrides it).

Completion runs at every <TAB>, so it must not log in or call the broker: it reads only
this file. The file holds names a user may type — targets, their roles, session ids and
their targets — never a token, password or database user. A failure to write it costs a
completion, never the command that wrote it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

VERSION = 1


class _Target(Protocol):
    target: str
    role: str
    engine: str


class _Session(Protocol):
    id: str
    target: str
    role: str


def cache_dir() -> Path:
    """Checked like the config directory (never chmod-ed; a shared one gets a
    ``dbaccess-<uid>`` directory): names planted by another user would be offered at
    <TAB>, and a link planted there could make us overwrite a file of ours."""
    from dbaccess.client.config import usable_dir

    override = os.environ.get("DBACCESS_CACHE_DIR")
    if override:
        named = Path(override)
    else:
        import platformdirs

        named = Path(platformdirs.user_cache_dir("dbaccess", appauthor=False))
    return usable_dir(named, private=False, variable="DBACCESS_CACHE_DIR")


def _file(profile: str) -> Path | None:
    from dbaccess.errors import ConfigError

    if not profile or not all(c.isalnum() or c in "-_" for c in profile):
        return None  # not a profile name (config.check_profile_name): no path from it
    try:
        return cache_dir() / f"names-{profile}.json"
    except ConfigError:
        return None  # no safe place: no completion, and the command goes on


def read_names(profile: str) -> dict[str, Any]:
    path = _file(profile)
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == VERSION else {}


def _write(profile: str, **update: Any) -> None:
    path = _file(profile)
    if path is None:
        return
    data = {**read_names(profile), **update, "version": VERSION}
    try:
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.unlink(missing_ok=True)  # left by a crashed run of ours (same pid)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(partial, flags, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(partial, path)  # a completion never reads half a file
    except OSError:
        pass


def remember_targets(profile: str | None, allowed: Iterable[_Target]) -> None:
    """Keep what ``GET /v1/targets`` answered: target -> roles, and target -> engine (which
    tells connect whose client to look for without asking the broker again)."""
    roles: dict[str, list[str]] = {}
    engines: dict[str, str] = {}
    for entry in allowed:
        roles.setdefault(entry.target, [])
        engines[entry.target] = entry.engine
        if entry.role not in roles[entry.target]:
            roles[entry.target].append(entry.role)
    _write(_profile(profile), targets=roles, engines=engines)


def remembered_engine(profile: str, target: str) -> str | None:
    engine = read_names(profile).get("engines", {}).get(target)
    return engine if isinstance(engine, str) else None


def remember_sessions(profile: str | None, live: Iterable[_Session]) -> None:
    """Keep the ids of the live sessions ``GET /v1/sessions`` listed."""
    _write(
        _profile(profile), sessions=[{"id": s.id, "target": s.target, "role": s.role} for s in live]
    )


def _profile(flag: str | None) -> str:
    from dbaccess.client.config import profile_name

    try:
        return profile_name(flag)
    except Exception:  # a broken profiles file: the command reports it, not the cache
        return ""


def targets(profile: str | None) -> dict[str, list[str]]:
    found = read_names(_profile(profile)).get("targets")
    return found if isinstance(found, dict) else {}


def sessions(profile: str | None) -> list[dict[str, str]]:
    found = read_names(_profile(profile)).get("sessions")
    return (
        [s for s in found if isinstance(s, dict) and "id" in s] if isinstance(found, list) else []
    )
