"""Profiles and local directories.

A profile names a broker; the file is ``config.toml`` under the user config directory
(``DBACCESS_CONFIG_DIR`` overrides it). Precedence for every setting: command-line flag >
``DBACCESS_*`` environment variable > profile > default.
"""

from __future__ import annotations

import os
import stat
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbaccess.errors import ConfigError, DbaccessError, NotFoundError, UsageError

DEFAULT_PROFILE = "default"


def config_dir() -> Path:
    """Where ``config.toml`` (and an opted-in token file) lives: a directory only we can
    change, since it names the broker our tokens are sent to (see ``usable_dir``)."""
    override = os.environ.get("DBACCESS_CONFIG_DIR")
    if override:
        named = Path(override)
    else:
        import platformdirs

        named = Path(platformdirs.user_config_dir("dbaccess", appauthor=False))
    used = usable_dir(named, private=False, variable="DBACCESS_CONFIG_DIR")
    left = _resolve(named, "DBACCESS_CONFIG_DIR") / "config.toml"
    if used != left.parent and _ours(left) and not (used / "config.toml").exists():
        # profiles from before dbaccess moved into a directory of its own: not read from a
        # place others can write to, and not silently forgotten either
        raise ConfigError(
            f"{left} is in a directory other users can write to; dbaccess keeps its "
            f"profiles in {used} instead",
            hint=f"check the broker URLs in it, then: mv {left} {used}/",
        )
    return used


def ca_file(pem: str) -> Path:
    """A gateway's CA certificate as a file libpq can name (PGSSLROOTCERT), for ``creds``:
    in the config directory (only we can change it, so nobody swaps the CA under us), named
    by its content's hash, so each CA is written once and a changed one is a new file."""
    import hashlib

    folder = config_dir() / "ca"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{hashlib.sha256(pem.encode()).hexdigest()[:32]}.pem"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(pem)
        os.replace(partial, path)  # never a half-written CA under the final name
    return path


def _ours(path: Path) -> bool:
    """A plain file of ours: another user's file in a shared directory is none of our
    business (it must not stop our commands, and its content is not to be trusted)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def runtime_dir() -> Path:
    """A private (0700, ours) directory for session files; tmpfs where the OS provides one.
    Session directories are created and swept here, and only here."""
    override = os.environ.get("DBACCESS_RUNTIME_DIR")
    if override:
        path = Path(override)
    else:
        import platformdirs

        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR platformdirs falls back to /tmp/runtime-UID (and warns);
            # the ownership and mode checks of usable_dir make that fallback safe to use.
            warnings.simplefilter("ignore")
            try:
                path = Path(platformdirs.user_runtime_dir("dbaccess", appauthor=False))
            except OSError as exc:
                # its fallback made by another user first (mkdir /tmp/runtime-UID):
                # platformdirs refuses it, as it should, but with a bare PermissionError
                where = exc.filename or "the fallback runtime directory"
                raise ConfigError(
                    f"no private runtime directory: {where}: {exc.strerror or type(exc).__name__}",
                    hint="set XDG_RUNTIME_DIR or DBACCESS_RUNTIME_DIR to a directory of "
                    "your own (0700)",
                ) from None
    return usable_dir(path, private=True, variable="DBACCESS_RUNTIME_DIR")


def usable_dir(path: Path, *, private: bool, variable: str) -> Path:
    """The directory to use when told to use ``path``. Never changes the mode of a
    directory that exists: the user may have named /tmp or their home.

    - missing: created (with any missing parents) as 0700;
    - ours and closed to others (for ``private`` no access at all, else no writes): itself;
    - open to others, or someone else's, like /tmp: a ``dbaccess-<uid>`` directory of our
      own inside it, created 0700, or refused if what is there is not ours and closed;
    - anything on the way that another user could rename or replace (theirs, or writable
      by others without the sticky bit): refused, as no directory inside it is safe.
    """
    closed = 0o077 if private else 0o022
    path = _resolve(path, variable)
    _create(path, variable)
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"{variable}: {path} is not a directory",
            hint=f"set {variable} to a directory of your own",
        )
    _check_holders(path, variable)
    if info.st_uid == os.geteuid() and not _open_bits(info, closed):
        return path
    own = path / f"dbaccess-{os.geteuid()}"
    _create(own, variable)
    return _check_own(own, closed, variable)


def _resolve(path: Path, variable: str, depth: int = 0) -> Path:
    """``path`` with its symlinks followed — only those owned by us or root. A link that
    another user planted (``/tmp/runtime-1000`` when XDG_RUNTIME_DIR is unset) would
    otherwise send our session files into a directory of their choosing."""
    if depth > 40:
        raise ConfigError(
            f"{variable}: too many symlinks in {path}",
            hint=f"set {variable} to a directory of your own",
        )
    resolved = Path("/")
    for part in path.absolute().parts[1:]:
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        try:
            info = candidate.lstat()
        except FileNotFoundError:
            resolved = candidate  # to be created, checked then
            continue
        if not stat.S_ISLNK(info.st_mode):
            resolved = candidate
            continue
        if info.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"{variable}: {candidate} is a symlink of another user's; refusing to follow it",
                hint=f"set {variable} to a directory of your own",
            )
        resolved = _resolve(resolved / os.readlink(candidate), variable, depth + 1)
    return resolved


def private_dir(path: Path, variable: str) -> Path:
    """``path`` itself, created 0700 if missing, or refused unless it is ours and closed:
    for directories whose name is ours to choose (``tokens``), never the user's."""
    _create(path, variable)
    _check_holders(path.parent, variable)
    return _check_own(path, 0o077, variable)


def _create(path: Path, variable: str) -> None:
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)  # the umask can only take bits away
        except FileExistsError:
            pass  # made meanwhile: checked like any existing directory
        except OSError as exc:
            raise ConfigError(
                f"{variable}: cannot create {directory}: {exc.strerror}",
                hint=f"set {variable} to a directory of your own",
            ) from None


def _check_own(path: Path, closed: int, variable: str) -> Path:
    info = path.lstat()  # not stat: a symlink planted here is refused, not followed
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"{path} is not a plain directory; refusing to use it",
            hint=f"remove it, or set {variable} to a directory of your own",
        )
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} belongs to another user; refusing to use it",
            hint=f"set {variable} to a directory of your own",
        )
    mode = stat.S_IMODE(info.st_mode)
    if _open_bits(info, closed):
        raise ConfigError(
            f"{path} is open to other users (mode {mode:04o}); dbaccess does not change "
            "the mode of a directory it did not just create",
            hint=f"chmod 700 {path} if it is yours, or set {variable} to another directory",
        )
    return path


def _open_bits(info: os.stat_result, closed: int) -> int:
    """The bits of ``closed`` that are set, less group-write when the group is the user's
    own private group (Fedora, or Debian with umask 002, make directories 0775 that way):
    as for OpenSSH's StrictModes, a group with no member but us is no one else. Reading
    is another matter: a session directory stays closed to the group too."""
    open_bits = stat.S_IMODE(info.st_mode) & closed
    if open_bits & 0o020 and _private_group(info.st_gid):
        open_bits &= ~0o020
    return open_bits


def _private_group(gid: int) -> bool:
    import grp
    import pwd

    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(os.geteuid())
    except KeyError:
        return False
    return (
        gid == user.pw_gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}
    )


def _check_holders(path: Path, variable: str) -> None:
    """``path`` and every directory above it: only we or root may rename what is inside,
    so each is ours or root's, and writable by others only with the sticky bit (/tmp)."""
    for directory in (path, *path.parents):
        info = directory.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"{variable}: {directory} belongs to another user, who could replace what "
                "dbaccess keeps there",
                hint=f"set {variable} to a directory of your own",
            )
        if _open_bits(info, 0o022) and not mode & stat.S_ISVTX:
            raise ConfigError(
                f"{variable}: other users may rename or replace what is in {directory} "
                f"(mode {mode:04o}, no sticky bit)",
                hint=f"set {variable} to a directory of your own",
            )


@dataclass
class Profile:
    name: str
    broker: str | None = None
    client: dict[str, str] = field(default_factory=dict)
    # Tokens in a 0600 file instead of the keyring (opt-in, announced on every use).
    insecure_storage: bool = False
    # The target `dbaccess breakglass` uses when none is named.
    breakglass_target: str | None = None

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.broker:
            out["broker"] = self.broker
        if self.insecure_storage:
            out["insecure_storage"] = True
        if self.client:
            out["client"] = dict(self.client)
        if self.breakglass_target:
            out["breakglass_target"] = self.breakglass_target
        return out


@dataclass
class ProfileFile:
    path: Path
    current: str = DEFAULT_PROFILE
    profiles: dict[str, Profile] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> ProfileFile:
        path = path or config_dir() / "config.toml"
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{path}: not valid TOML: {exc}", hint=f"fix or remove {path}"
            ) from None
        profiles = {}
        for name, body in (raw.get("profiles") or {}).items():
            if not isinstance(body, dict):
                raise ConfigError(f"{path}: profiles.{name}: must be a table")
            broker = body.get("broker")
            if broker is not None and not isinstance(broker, str):
                raise ConfigError(f"{path}: profiles.{name}.broker: must be a string (a URL)")
            insecure = body.get("insecure_storage", False)
            if not isinstance(insecure, bool):
                raise ConfigError(f"{path}: profiles.{name}.insecure_storage: must be true/false")
            breakglass = body.get("breakglass_target")
            if breakglass is not None and not isinstance(breakglass, str):
                raise ConfigError(f"{path}: profiles.{name}.breakglass_target: must be a string")
            profiles[name] = Profile(
                name, broker, dict(body.get("client") or {}), insecure, breakglass
            )
        return cls(path, str(raw.get("current", DEFAULT_PROFILE)), profiles)

    def save(self) -> None:
        import tomli_w

        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "current": self.current,
            "profiles": {name: p.to_toml() for name, p in sorted(self.profiles.items())},
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(tomli_w.dumps(body))
        tmp.replace(self.path)


# ``profiles`` below: the invocation's config.toml, read once by its caller (the CLI's
# context, the fast exec path) and passed down; None reads the file here.


def profile_name(flag: str | None, profiles: ProfileFile | None = None) -> str:
    return flag or os.environ.get("DBACCESS_PROFILE") or (profiles or ProfileFile.load()).current


def resolve_broker(
    profile: str, flag: str | None = None, *, profiles: ProfileFile | None = None
) -> str:
    """The broker URL by precedence: flag > DBACCESS_BROKER > profile."""
    url = flag or os.environ.get("DBACCESS_BROKER")
    if not url:
        file = profiles or ProfileFile.load()
        stored = file.profiles.get(profile)
        url = stored.broker if stored else None
        if stored is None and file.profiles:
            # most likely a typo (--profile prdo): say which profiles there are
            known = sorted(file.profiles)
            raise NotFoundError(
                f"there is no profile '{profile}' in {file.path}; known profiles: "
                f"{', '.join(known)}",
                hint=f"use one with: dbaccess --profile {known[0]} ...; or create "
                f"'{profile}': dbaccess --profile {profile} login --broker URL",
            )
    if not url:
        raise UsageError(
            f"no broker is configured for profile '{profile}'",
            hint="dbaccess login --broker https://broker.example.com",
        )
    return check_broker_url(url)


def check_broker_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"broker URL '{url}' must start with https:// (or http:// locally)")
    return url.rstrip("/")


def check_profile_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UsageError(f"profile name '{name}' may only use letters, digits, - and _")
    return name


def chosen_clients(
    profile: str, flag: str | None = None, *, profiles: ProfileFile | None = None
) -> dict[str, str]:
    """engine -> client program, by precedence: --client (every engine) > the engine's
    variable (DBACCESS_PSQL, DBACCESS_MYSQL: ``VARIABLE`` of its client module) > the
    profile's ``client`` table > the built-in default (not listed)."""
    from dbaccess.client.dbclients.registry import CLIENTS

    stored = (profiles or ProfileFile.load()).profiles.get(profile)
    chosen = dict(stored.client) if stored else {}
    for engine, clients in CLIENTS.items():
        if os.environ.get(clients.VARIABLE):
            chosen[engine] = os.environ[clients.VARIABLE]
    if flag:
        chosen = {engine: flag for engine in CLIENTS}
    return chosen


def hint_profile(flag: str | None, profiles: ProfileFile | None = None) -> str | None:
    """The profile that hints must name, or None: the active one (flag > DBACCESS_PROFILE
    > config.toml's current), when a bare ``dbaccess`` would pick another — then the
    hint's command is right to copy. Shared by both exec paths and every command."""
    try:
        file = profiles or ProfileFile.load()
        active = profile_name(flag, file)
        return None if active == file.current else active
    except DbaccessError:
        return None  # an unreadable config.toml is reported on its own
