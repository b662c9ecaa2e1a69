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

from dbaccess.errors import ConfigError, NotFoundError, UsageError

DEFAULT_PROFILE = "default"


def config_dir() -> Path:
    override = os.environ.get("DBACCESS_CONFIG_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("dbaccess", appauthor=False))


def runtime_dir() -> Path:
    """A private (0700, ours) directory for session files; tmpfs where the OS provides one."""
    override = os.environ.get("DBACCESS_RUNTIME_DIR")
    if override:
        path = Path(override)
    else:
        import platformdirs

        with warnings.catch_warnings():
            # Without XDG_RUNTIME_DIR platformdirs falls back to /tmp/runtime-UID (and warns);
            # the ownership and mode checks below make that fallback safe to use.
            warnings.simplefilter("ignore")
            path = Path(platformdirs.user_runtime_dir("dbaccess", appauthor=False))
    ensure_private_dir(path)
    return path


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` as 0700 or check that it is ours, not a symlink, and closed to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a plain directory; refusing to keep secrets there")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} belongs to another user; refusing to keep secrets there",
            hint="set DBACCESS_RUNTIME_DIR to a directory of your own",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


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


def profile_name(flag: str | None) -> str:
    return flag or os.environ.get("DBACCESS_PROFILE") or ProfileFile.load().current


def resolve_broker(profile: str, flag: str | None = None) -> str:
    """The broker URL by precedence: flag > DBACCESS_BROKER > profile."""
    url = flag or os.environ.get("DBACCESS_BROKER")
    if not url:
        file = ProfileFile.load()
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


CLIENT_ENV = {"postgres": "DBACCESS_PSQL", "mariadb": "DBACCESS_MYSQL"}


def chosen_clients(profile: str, flag: str | None = None) -> dict[str, str]:
    """engine -> client program, by precedence: --client (both engines) > DBACCESS_PSQL /
    DBACCESS_MYSQL > the profile's ``client`` table > the built-in default (not listed)."""
    stored = ProfileFile.load().profiles.get(profile)
    chosen = dict(stored.client) if stored else {}
    for engine, variable in CLIENT_ENV.items():
        if os.environ.get(variable):
            chosen[engine] = os.environ[variable]
    if flag:
        chosen = {engine: flag for engine in CLIENT_ENV}
    return chosen
