"""What a new user meets first, on a machine like theirs (no PYTHONUNBUFFERED)."""

from __future__ import annotations

import json

import pytest

from dbaccess.sandbox.secret_service import SecretService
from dbaccess.sandbox.stack import Stack
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.integration


def test_json_login_flushes_the_device_code_for_a_waiting_script(
    stack: Stack, secret_service: SecretService
) -> None:
    runner = Cli(stack, secret_service)
    assert "PYTHONUNBUFFERED" not in runner.env
    # Cli.login reads the first line with a deadline: an unflushed device code (stdout is a
    # pipe, so block-buffered) would wait for the approval that waits for it.
    result = runner.login("alice", profile="first-contact")
    assert result.returncode == 0, result.stderr
    first, last = (json.loads(line)["data"] for line in result.stdout.splitlines())
    assert first["user_code"] and first["verification_uri"].startswith("http")
    assert last["profile"] == "first-contact"
