"""A logged-in BrokerClient for the current profile (token refreshed when needed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from dbaccess.auth.login import bearer_token
from dbaccess.auth.token_store import StoredLogin
from dbaccess.client import BrokerClient
from dbaccess.config import profile_name, resolve_broker


@contextmanager
def logged_in(profile_flag: str | None) -> Iterator[tuple[BrokerClient, StoredLogin]]:
    profile = profile_name(profile_flag)
    broker = resolve_broker(profile)
    with httpx.Client(timeout=30) as http:
        login = bearer_token(profile, http)
        yield BrokerClient(broker, http, login.id_token), login
