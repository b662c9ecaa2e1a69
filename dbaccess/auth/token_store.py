"""Tokens live in the OS keyring and nowhere else: one small entry per profile and issuer.

The entry holds the ID token, refresh token, expiry and subject (not a whole msal cache:
Windows caps a credential at 2,560 bytes). With no keyring backend we fail with a fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import keyring
import keyring.errors

from dbaccess.errors import KeyringUnavailable

SERVICE = "dbaccess"

_NO_BACKEND_HINT = (
    "install and unlock a Secret Service (e.g. gnome-keyring) or another keyring backend; "
    "see docs/troubleshooting.md#no-keyring"
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

    def __repr__(self) -> str:
        return f"StoredLogin(subject={self.subject!r}, issuer={self.issuer!r})"


def _account(profile: str) -> str:
    return f"profile:{profile}"


def save_login(profile: str, login: StoredLogin) -> None:
    try:
        keyring.set_password(SERVICE, _account(profile), json.dumps(asdict(login)))
    except keyring.errors.NoKeyringError:
        raise KeyringUnavailable("no keyring backend is available to keep your login",
                                 hint=_NO_BACKEND_HINT) from None
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"the keyring refused to store your login: {exc}",
                                 hint=_NO_BACKEND_HINT) from None


def load_login(profile: str) -> StoredLogin | None:
    try:
        raw = keyring.get_password(SERVICE, _account(profile))
    except keyring.errors.NoKeyringError:
        raise KeyringUnavailable("no keyring backend is available to read your login",
                                 hint=_NO_BACKEND_HINT) from None
    except keyring.errors.KeyringError as exc:
        raise KeyringUnavailable(f"the keyring refused to read your login: {exc}",
                                 hint=_NO_BACKEND_HINT) from None
    if raw is None:
        return None
    try:
        return StoredLogin(**json.loads(raw))
    except (ValueError, TypeError):
        return None  # an entry from another version: treat as logged out


def delete_login(profile: str) -> bool:
    try:
        keyring.delete_password(SERVICE, _account(profile))
    except keyring.errors.PasswordDeleteError:
        return False
    except keyring.errors.NoKeyringError:
        raise KeyringUnavailable("no keyring backend is available",
                                 hint=_NO_BACKEND_HINT) from None
    return True
