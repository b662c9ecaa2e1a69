"""``[broker] metrics_token_env`` / ``_file``: GET /metrics answers only the scraper that
sends the token; without one configured it stays open, as before. Through the suite
stack's broker configuration, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.errors import ConfigError
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack

pytestmark = pytest.mark.integration

TOKEN = "scrape-3f9c1b7e2d"


def settings_with(stack: Stack, tmp_path: Path, **broker: Any) -> Settings:
    settings = load_settings(stack.broker_config)
    store = f"sqlite:///{tmp_path / 'broker.db'}"
    return settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"store": store, **broker})}
    )


def test_metrics_need_the_token_when_one_is_configured(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    app = create_app(
        settings_with(stack, tmp_path, metrics_token_file=token_file), run_reaper=False
    )
    with TestClient(app) as api:
        ok = api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "dbaccess_sessions_issued_total" in ok.text
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Bearer é-not-ascii".encode()},  # bytes compared: a 401, not a 500
        ):
            refused = api.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["code"] == "metrics_token"
            assert "dbaccess_" not in refused.text
            assert TOKEN not in refused.text
        assert api.get("/healthz").status_code == 200  # health stays open


def test_metrics_stay_open_without_a_token(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    with TestClient(create_app(settings_with(stack, tmp_path), run_reaper=False)) as api:
        assert api.get("/metrics").status_code == 200


def test_a_metrics_token_that_cannot_be_read_fails_the_start(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        create_app(settings_with(stack, tmp_path, metrics_token_file=empty), run_reaper=False)
    with pytest.raises(ConfigError, match="DBACCESS_TEST_METRICS"):
        create_app(
            settings_with(stack, tmp_path, metrics_token_env="DBACCESS_TEST_METRICS"),
            run_reaper=False,
        )


def test_both_places_for_the_token_are_refused() -> None:
    from pydantic import ValidationError

    from dbaccess.broker.settings import BrokerSection

    with pytest.raises(ValidationError, match="at most one of metrics_token_env"):
        BrokerSection(metrics_token_env="X", metrics_token_file=Path("/x"))
