"""How long a session may take and still be handed out: the broker's deadline, shortened
by what the client says it waits (Dbaccess-Timeout) but never lengthened, whatever the
header holds."""

from __future__ import annotations

import pytest

from dbaccess.broker.api.deps import client_timeout
from dbaccess.broker.services.target_guard import DELIVERY_DEADLINE, delivery_deadline


@pytest.mark.parametrize(
    "raw, seconds", [("30", 30.0), ("7.5", 7.5), ("1e1", 10.0), (" 12 ", 12.0), ("3600", 3600.0)]
)
def test_a_number_of_seconds_is_read(raw: str, seconds: float) -> None:
    assert client_timeout(raw) == seconds


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "0",
        "-5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "3601",
        "1e400",
        "ten",
        "5s",
        "1" * 40,
        "\x1b[31m5",
    ],
)
def test_anything_else_is_as_good_as_no_header(raw: str | None) -> None:
    assert client_timeout(raw) is None


def test_the_client_can_only_shorten_the_deadline() -> None:
    assert delivery_deadline(None) == DELIVERY_DEADLINE
    assert delivery_deadline(10.0) == 7.5  # three quarters: the rest is for the network
    assert delivery_deadline(30.0) == DELIVERY_DEADLINE  # 22.5 would be longer
    assert delivery_deadline(3600.0) == DELIVERY_DEADLINE
    assert delivery_deadline(0.1) == 0.075
