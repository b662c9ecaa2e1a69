"""Tokens live in the OS keyring: one small entry per profile and issuer.

The entry holds the ID token, refresh token, expiry and subject (not a whole msal cache:
Windows caps a credential at 2,560 bytes). With no keyring backend we fail with a fix —
unless the profile opted in (``dbaccess login --insecure-storage``) to a 0600 file, which
every command then announces (as ``gh`` does). keyrings.alt's silent plaintext fallback
is never used.

keyring is imported only where it is used: with its backends it costs ~100 ms, which the
fast exec path (``read_from_secret_service``) avoids.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dbaccess.errors import KeyringUnavailable

if TYPE_CHECKING:
    from dbaccess.client.config import ProfileFile

SERVICE = "dbaccess"
REFRESH_MARGIN = 60.0  # refresh a token this many seconds before it expires

_NO_BACKEND_HINT = (
    "install and unlock a Secret Service (e.g. gnome-keyring), or accept a 0600 file with "
    "dbaccess login --insecure-storage; see docs/troubleshooting.md#no-keyring"
)


@dataclass(frozen=True)
class StoredLogin:
    issuer: str
    client_id: str
    scopes: list[str]
    id_token: str
    refresh_token: str | None
    expires_at: float
    subject: str
    email: str | None = None
    kind: str = "oidc"  # or "entra": refreshed through msal

    def __repr__(self) -> str:
        return f"StoredLogin(subject={self.subject!r}, issuer={self.issuer!r})"


def _account(profile: str) -> str:
    return f"profile:{profile}"


def token_file(profile: str, profiles: ProfileFile | None = None) -> Path | None:
    """The 0600 file holding the profile's tokens, if the profile opted in to one
    (``profiles``: the invocation's config.toml; None reads it)."""
    from dbaccess.client.config import ProfileFile, config_dir

    stored = (profiles or ProfileFile.load()).profiles.get(profile)
    if stored is None or not stored.insecure_storage:
        return None
    return config_dir() / "tokens" / f"{profile}.json"


def ensure_storage(profile: str, profiles: ProfileFile | None = None) -> None:
    """Fail before a login starts, rather than after the person approved it."""
    if token_file(profile, profiles) is not None:
        return
    import keyring
    import keyring.backends.fail

    if isinstance(keyring.get_keyring(), keyring.backends.fail.Keyring):
        raise KeyringUnavailable(
            "no keyring backend is available to keep your login", hint=_NO_BACKEND_HINT
        )


def save_login(profile: str, login: StoredLogin, profiles: ProfileFile | None = None) -> None:
    import keyring
    import keyring.errors

    file = token_file(profile, profiles)
    if file is not None:
        from dbaccess.client.config import private_dir

        # 0700 when we create it; an existing one open to others is refused, not chmod-ed
        private_dir(file.parent, "DBACCESS_CONFIG_DIR")
        staged = file.with_suffix(".tmp")
        staged.unlink(missing_ok=True)
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(login), handle)
        staged.replace(file)
        return
    try:
        keyring.set_password(SERVICE, _account(profile), json.dumps(asdict(login)))
    except keyring.errors.NoKeyringError:
        raise KeyringUnavailable(
            "no keyring backend is available to keep your login", hint=_NO_BACKEND_HINT
        ) from None
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(
            f"the keyring refused to store your login: {exc}", hint=_NO_BACKEND_HINT
        ) from None


def load_login(profile: str, profiles: ProfileFile | None = None) -> StoredLogin | None:
    import keyring
    import keyring.errors

    file = token_file(profile, profiles)
    if file is not None:
        try:
            raw: str | None = file.read_text()
        except FileNotFoundError:
            raw = None
        return _parse(raw)
    try:
        raw = keyring.get_password(SERVICE, _account(profile))
    except keyring.errors.NoKeyringError:
        raise KeyringUnavailable(
            "no keyring backend is available to read your login", hint=_NO_BACKEND_HINT
        ) from None
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(
            f"the keyring refused to read your login: {exc}", hint=_NO_BACKEND_HINT
        ) from None
    return _parse(raw)


def _parse(raw: str | None) -> StoredLogin | None:
    if raw is None:
        return None
    try:
        return StoredLogin(**json.loads(raw))
    except (ValueError, TypeError):
        return None  # an entry from another version: treat as logged out


def delete_login(profile: str, profiles: ProfileFile | None = None) -> bool:
    import keyring
    import keyring.errors

    file = token_file(profile, profiles)
    if file is not None:
        existed = file.exists()
        file.unlink(missing_ok=True)
        return existed
    try:
        keyring.delete_password(SERVICE, _account(profile))
    except keyring.errors.PasswordDeleteError:
        return False
    except keyring.errors.NoKeyringError:
        raise KeyringUnavailable("no keyring backend is available", hint=_NO_BACKEND_HINT) from None
    return True


def read_from_secret_service(profile: str) -> StoredLogin | None:
    """The login as keyring's Secret Service backend stored it (the backend keyring picks
    on Linux), read with secretstorage alone: keyring's own import and backend discovery
    cost ~100 ms. None whenever that is not certainly what keyring would return — not
    Linux, keyring configured for some backend, no Secret Service, a locked collection or
    item, no such entry; the caller then uses ``load_login``, which also explains failures."""
    if not sys.platform.startswith("linux") or _keyring_configured():
        return None
    try:
        import secretstorage
        from jeepney.wrappers import DBusErrorResponse
    except ImportError:
        return None
    try:
        with secretstorage.dbus_init() as connection:
            collection = secretstorage.get_default_collection(connection)
            if collection.is_locked():
                return None
            # The attributes keyring's SecretService backend stores and searches by.
            for item in collection.search_items(
                {"username": _account(profile), "service": SERVICE}
            ):
                if item.is_locked():
                    return None
                return _parse(item.get_secret().decode("utf-8"))
    except (
        secretstorage.exceptions.SecretStorageException,
        DBusErrorResponse,
        OSError,
        ValueError,
    ):
        return None
    return None


def _keyring_configured() -> bool:
    """keyring told to use another backend than Secret Service, or to use it differently
    (PYTHON_KEYRING_BACKEND, KEYRING_PROPERTY_*, keyringrc.cfg), or likely to prefer
    another one (KWallet on KDE)."""
    chosen = os.environ.get("PYTHON_KEYRING_BACKEND")
    if chosen:
        return chosen != "keyring.backends.SecretService.Keyring"
    if any(name.startswith("KEYRING_PROPERTY_") for name in os.environ):
        return True  # e.g. a preferred collection: keyring would look elsewhere
    if "KDE" in os.environ.get("XDG_CURRENT_DESKTOP", "").split(":"):
        return True  # keyring prefers KWallet there
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.exists(os.path.join(root, "python_keyring", "keyringrc.cfg"))
