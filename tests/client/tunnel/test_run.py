"""The tunnel's start and end around the protocol: the port, the GUI's settings, revoking."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dbaccess.client.session.request import SessionRequest
from dbaccess.client.tunnel.keeper import Held
from dbaccess.client.tunnel.run import TunnelSetup, _revoke_all, listen, paste_settings
from dbaccess.errors import BrokerUnreachable, UsageError


@dataclass
class Granted:
    id: str
    expires_at: datetime


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.warnings: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def ready(self, settings: dict[str, Any]) -> None:
        raise AssertionError("not here")


class Broker:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    def revoke(self, session_id: str) -> str:
        if session_id == "unreachable":
            raise BrokerUnreachable("the broker cannot be reached")
        self.revoked.append(session_id)
        return "revoked"


def test_every_session_not_long_over_is_revoked_and_a_failure_is_a_warning() -> None:
    now = datetime.now(UTC)
    obtained = [
        Held(Granted("long-over", now - timedelta(hours=2)), obtained_at=now),
        Held(Granted("just-over", now - timedelta(seconds=5)), obtained_at=now),
        Held(Granted("unreachable", now + timedelta(hours=1)), obtained_at=now),
        Held(Granted("live", now + timedelta(hours=1)), obtained_at=now, ended=True),
    ]
    broker, report = Broker(), Report()
    _revoke_all(lambda: broker, obtained, report)  # type: ignore[arg-type, return-value]
    assert broker.revoked == ["just-over", "live"]
    assert report.warnings == ["could not revoke session unreachable: the broker cannot be reached"]


def test_a_busy_port_names_another_and_the_loopback_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError) as caught:
            listen(port)
    assert caught.value.message.startswith(f"port {port} on 127.0.0.1 is already in use")
    assert caught.value.hint is not None and f"--port {port + 1}" in caught.value.hint


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_outside_tcps_range_is_a_usage_error(port: int) -> None:
    with pytest.raises(UsageError, match="is not a TCP port"):
        listen(port)


def test_the_settings_name_the_local_secret_and_plain_loopback() -> None:
    setup = TunnelSetup(
        request=SessionRequest(target="vault", role="readonly"), profile="default", port=15432
    )
    settings = paste_settings(setup, 15432, "vault", "s3cret", Path("/x/tunnel/a.secret"))
    assert settings["password"] == "s3cret" and settings["user"] == "dbaccess"
    assert settings["jdbc_url"] == "jdbc:postgresql://127.0.0.1:15432/vault?sslmode=disable"
    assert (settings["host"], settings["sslmode"]) == ("127.0.0.1", "disable")
