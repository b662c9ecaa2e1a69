"""Errors print what the broker said, brackets included (not taken for rich markup)."""

from __future__ import annotations

import pytest

from dbaccess.cli.output import Globals
from dbaccess.errors import DeniedError


def test_a_pattern_in_a_message_is_printed_as_is(capsys: pytest.CaptureFixture[str]) -> None:
    Globals().error(DeniedError(
        "incident id 'x' does not match [a-z]{3}-[0-9]+: give an id like abc-123",
        hint="dbaccess breakglass demo --incident [abc]-123"))
    err = capsys.readouterr().err
    assert "does not match [a-z]{3}-[0-9]+: give an id like abc-123" in err
    assert "hint: dbaccess breakglass demo --incident [abc]-123" in err
