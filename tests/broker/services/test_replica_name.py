"""A replica signs its claims with its name, in a 64-character column: whatever the host's
name (a cloud host's is often 50 characters), the name fits, and stays unique."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.settings import load_settings
from dbaccess.broker.store import Store
from tests.broker.test_settings import GOOD, write


def test_a_long_host_name_still_makes_a_name_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_host = "ip-172-31-100-200.ap-southeast-2.compute.internal.example"  # 57
    monkeypatch.setattr(socket, "gethostname", lambda: long_host)
    settings = load_settings(write(tmp_path, GOOD))
    store = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        names = {BrokerContext.build(settings, store, {}).replica for _ in range(20)}
    finally:
        store.close()
    assert all(len(name) <= 64 and name.startswith(long_host[:40]) for name in names)
    assert len(names) == 20  # unique per process start, as before
