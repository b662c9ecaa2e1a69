"""Fixtures the broker's API tests share: real ID tokens of the sandbox's demo people."""

from __future__ import annotations

import pytest

from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack

PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank")


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> dict[str, str]:
    return {name: device_tokens(stack.idp, name)["id_token"] for name in PEOPLE}
