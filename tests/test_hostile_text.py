"""Text people write and other people's terminals show: refused with control or
text-direction characters where it comes in, shown as written (never obeyed) where it
goes out — in tables, errors and both exec paths."""

from __future__ import annotations

import io
import sys

import pytest
from pydantic import ValidationError

from dbaccess.cli.output import Globals, print_result, result_table
from dbaccess.errors import DeniedError
from dbaccess.text import printable
from dbaccess.wire import BreakglassCreate, RequestDecision, ReviewClose, SessionCreate

HOSTILE = [
    "\x1b[2J\x1b[Happroved by security",  # clears the screen and rewrites it
    "fix order 7\napprovals 2/2",  # a second, fake row
    "refund \u202edaolnwod\u202c",  # reads backwards from the override on
    "bell\x07",
    "csi\x9b31m",  # C1 control: the one-byte CSI
    "null\x00byte",
    "line\u2028separator",  # a newline to chat and webhook readers
    "prod\u200b",  # looks like prod
    "\ufeffbom",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_the_broker_refuses_control_and_direction_characters_in_every_text_field(
    value: str,
) -> None:
    cases = [
        (SessionCreate, {"target": "demo", "role": "readonly", "reason": value}),
        (SessionCreate, {"target": "demo", "role": "readonly", "ticket": value}),
        (SessionCreate, {"target": value, "role": "readonly"}),
        (SessionCreate, {"target": "demo", "role": value}),
        (BreakglassCreate, {"incident": value, "reason": "r"}),
        (BreakglassCreate, {"incident": "INC-1", "reason": value}),
        (BreakglassCreate, {"incident": "INC-1", "reason": "r", "target": value}),
        (RequestDecision, {"reason": value}),
        (ReviewClose, {"note": value}),
    ]
    for model, body in cases:
        with pytest.raises(ValidationError, match="control or invisible formatting"):
            model.model_validate(body)


def test_ordinary_text_in_any_script_passes() -> None:
    for value in (
        "fix order 7 [JIRA-88]",
        "Überweisung prüfen",
        "修复订单",
        "tab-free ok",
        "می\u200cخواهم",
        "👩\u200d💻 on call",
    ):  # joiners are writing, not tricks
        assert SessionCreate(target="demo", role="readonly", reason=value).reason == value


def rendered(human: object, monkeypatch: pytest.MonkeyPatch) -> str:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    print_result(human)
    return out.getvalue()


@pytest.mark.parametrize("value", [*HOSTILE, "[/]", "[bold red]not markup[/]"])
def test_a_table_shows_each_value_as_written_and_obeys_none(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. a reason stored before the broker refused such text, shown to an approver
    table = result_table("id", "reason")
    table.add_row("3f0c", value)
    text = rendered(table, monkeypatch)
    assert printable(value) in text  # "[/]" once crashed `dbaccess requests` (MarkupError)
    assert len(text.splitlines()) == 2  # header and one row: no row forged by a newline
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in text.replace("\n", ""))
    assert "\u202e" not in text


def test_errors_quote_what_people_wrote_without_obeying_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Globals().error(
        DeniedError("you asked for another reason '\x1b[2J[/]'", hint="dbaccess withdraw \u202eabc")
    )
    err = capsys.readouterr().err
    assert "another reason '\\x1b[2J[/]'" in err
    assert "hint: dbaccess withdraw \\u202eabc" in err


def test_names_inside_messages_are_shown_not_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    from dbaccess.cli.output import shown

    # whoami, login and the approvers' lines put emails and subjects inside markup
    email = "[/]mallory@example.com\x1b]0;x\x07"
    text = rendered(f"[bold]{shown(email)}[/] (subject s)", monkeypatch)
    assert text == "[/]mallory@example.com\\x1b]0;x\\x07 (subject s)\n"


def test_warnings_and_the_brokers_prompts_are_plain_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. an incident id "INC-1[/]" a pattern allows, quoted in the break-glass warning
    Globals().warn("BREAK-GLASS session for incident INC-1[/] \x1b[2J")
    assert "warning: BREAK-GLASS session for incident INC-1[/] \\x1b[2J" in capsys.readouterr().err
    monkeypatch.setattr(Globals, "ask", lambda self, question: "ok")
    assert Globals().ask_reason("a reason is required [red]by rule[/]") == "ok"
    assert "a reason is required [red]by rule[/]" in capsys.readouterr().err


@pytest.mark.parametrize("value", HOSTILE)
def test_one_line_shows_hostile_sql_on_one_safe_line(value: str) -> None:
    from dbaccess.text import first_unsafe, one_line

    for width in range(1, 40):
        shown = one_line(f"SELECT '{value}' FROM t\nWHERE x = 1", width)
        assert first_unsafe(shown) is None and "\n" not in shown
        assert len(shown) <= width
        if shown.endswith("…"):
            # never an escape cut in half: what is kept is a prefix of the whole line
            assert one_line(f"SELECT '{value}' FROM t\nWHERE x = 1", 1000).startswith(shown[:-1])


def test_one_line_folds_line_breaks_and_keeps_short_text() -> None:
    from dbaccess.text import one_line

    assert one_line("SELECT 1,\n\t  2\r\nFROM t", 60) == "SELECT 1, 2 FROM t"
    assert one_line("SELECT '\x1b[2J'", 60) == "SELECT '\\x1b[2J'"
    assert one_line("SELECT '\x1b[2J'", 11) == "SELECT '…"  # not "SELECT '\\x1…"
