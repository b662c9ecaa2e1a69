"""A real Secret Service (gnome-keyring over D-Bus) keeps the CLI's tokens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dbaccess.sandbox.secret_service import SecretService

pytestmark = pytest.mark.integration


def in_child(service: SecretService, code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **service.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_token_store_round_trips_through_the_secret_service(secret_service: SecretService) -> None:
    backend = in_child(secret_service, "import keyring; print(type(keyring.get_keyring()))")
    assert "SecretService" in backend
    in_child(
        secret_service,
        """
from dbaccess.client.auth.token_store import StoredLogin, save_login
save_login("work", StoredLogin(issuer="https://idp", client_id="c", scopes=["openid"],
           id_token="header.payload.sig", refresh_token="r-1", expires_at=1.0, subject="alice"))
""",
    )
    # a second process (as the next CLI command would be) reads it back, then deletes it
    assert (
        in_child(
            secret_service,
            """
from dbaccess.client.auth.token_store import load_login, delete_login
login = load_login("work")
print(login.subject, login.refresh_token, delete_login("work"), load_login("work"))
""",
        )
        == "alice r-1 True None"
    )
