"""The CLI's one HTTP client, pointed at a broker app running in-process (Starlette's
TestClient transport) while every other host (the identity provider) is reached over
the network, as in real use."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from dbaccess.client import context as api

BROKER = "http://testserver"


class Shared:
    """Hands one client to every ``with api.http_client() as http`` block, unclosed."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __enter__(self) -> httpx.Client:
        return self.client

    def __exit__(self, *exc: object) -> None:
        pass


def route_cli_to(broker: TestClient, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    """Make the CLI reach ``broker`` at BROKER; returns the client (close it after)."""
    http = httpx.Client(mounts={BROKER: broker._transport}, timeout=30)
    monkeypatch.setattr(api, "http_client", lambda: Shared(http))
    return http
