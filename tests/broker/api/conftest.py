"""Fixtures of the broker API's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack


@pytest.fixture
def web_api(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The suite stack's broker configuration (with its [web] pages) as an app of its own,
    on a private store."""
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    store = f"sqlite:///{tmp_path / 'broker.db'}"
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"store": store})}
    )
    with TestClient(create_app(settings, run_reaper=False)) as client:
        yield client
