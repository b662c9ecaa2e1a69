"""``[broker] metrics_token_env`` / ``_file``: GET /metrics answers only the scraper that
sends the token; without one configured it stays open, as before. Through the suite
stack's broker configuration, in-process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
            {"Authorization": f"bearer  {TOKEN}  ".replace(TOKEN, TOKEN.upper())},
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


@contextlib.contextmanager
def _removed(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def test_a_reload_takes_a_new_token_and_refuses_an_unreadable_one(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbaccess.broker.api.app import reload_settings

    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = settings_with(stack, tmp_path)
    # beside the stack's own file, so its relative paths mean the same
    config = stack.broker_config.with_name(f"metrics-reload-{tmp_path.name}.toml")
    text = stack.broker_config.read_text()
    assert "[broker]\n" in text
    with TestClient(create_app(settings, run_reaper=False)) as api, _removed(config):
        assert api.get("/metrics").status_code == 200
        ctx = api.app.state.service.ctx  # type: ignore[attr-defined]
        # the token set by a reload counts at once (not only at the next start)
        monkeypatch.setenv("DBACCESS_TEST_METRICS", f"{TOKEN}\n")  # its newline dropped
        config.write_text(
            text.replace("[broker]\n", '[broker]\nmetrics_token_env = "DBACCESS_TEST_METRICS"\n', 1)
        )
        assert reload_settings(ctx, config)
        assert api.get("/metrics").status_code == 401
        ok = api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        # a reload whose token cannot be read is refused whole: the running one stays
        monkeypatch.delenv("DBACCESS_TEST_METRICS")
        assert not reload_settings(ctx, config)
        assert api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_check_config_reads_the_metrics_token(tmp_path: Path) -> None:
    from dbaccess.broker.settings import load_settings as load
    from tests.broker.test_settings import GOOD, write

    (tmp_path / "demo.pw").write_text("secret\n")
    config = write(
        tmp_path, GOOD.replace("[broker]\n", '[broker]\nmetrics_token_file = "m.tok"\n', 1)
    )
    with pytest.raises(ConfigError, match="the metrics token"):
        load(config, read_secrets=True)  # what check-config and a reload read
    (tmp_path / "m.tok").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load(config, read_secrets=True)
    (tmp_path / "m.tok").write_text(f"{TOKEN}\n")
    assert load(config, read_secrets=True).broker.read_metrics_token() == TOKEN.encode()
