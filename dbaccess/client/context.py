"""A logged-in BrokerClient for the current profile (token refreshed when needed), and the
one place the CLI makes its HTTP client — tests swap ``http_client`` for Starlette's
TestClient to drive the real broker in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from dbaccess.client.auth.login import bearer_token
from dbaccess.client.auth.token_store import StoredLogin
from dbaccess.client.broker_api import BrokerClient
from dbaccess.client.config import ProfileFile, profile_name, resolve_broker
from dbaccess.client.replies import timeout_seconds


def _default_http_client() -> httpx.Client:
    # --timeout applies to the identity provider's calls on this client too
    return httpx.Client(timeout=timeout_seconds())


http_client: Callable[[], httpx.Client] = _default_http_client


@contextmanager
def logged_in(
    profile_flag: str | None, profiles: ProfileFile | None = None
) -> Iterator[tuple[BrokerClient, StoredLogin]]:
    """``profiles``: the invocation's config.toml (None reads it)."""
    profile = profile_name(profile_flag, profiles)
    broker = resolve_broker(profile, profiles=profiles)
    with http_client() as http:
        login = bearer_token(profile, http, profiles=profiles)
        yield BrokerClient(broker, http, login.id_token), login
