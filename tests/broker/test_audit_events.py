"""The one list of audit event types stays complete, and break-glass shows an example
incident id rather than only a regex."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import dbaccess.broker
from dbaccess.broker.audit_events import AUDIT_EVENTS
from dbaccess.broker.services.breakglass import example_of

_EVENT = re.compile(r"(session|request|breakglass|review|reconcile|notify|web)\.[a-z_]+")


def _recorded_events() -> set[str]:
    """The event names the broker's code passes to ``Store.record``, ``_append_audit`` or
    ``_append_audits`` (directly, or through a variable named ``event``)."""
    found: set[str] = set()
    for path in Path(dbaccess.broker.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            sources: list[ast.AST] = []
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("record", "_append_audit")
            ):
                sources = list(node.args[:3])
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_append_audits"
            ):
                sources = list(node.args[2:3])  # the records: (event, subject, lease, detail)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "event" for t in node.targets
            ):
                sources = [node.value]
            for source in sources:
                found.update(
                    inner.value
                    for inner in ast.walk(source)
                    if isinstance(inner, ast.Constant)
                    and isinstance(inner.value, str)
                    and _EVENT.fullmatch(inner.value)
                )
    return found


def test_every_recorded_event_type_is_listed() -> None:
    recorded = _recorded_events()
    assert "request.withdrawn" in recorded and "session.granted" in recorded
    assert recorded - set(AUDIT_EVENTS) == set()
    assert set(AUDIT_EVENTS) - recorded == set()  # nor listed but never written
    assert len(AUDIT_EVENTS) == len(set(AUDIT_EVENTS))


@pytest.mark.parametrize(
    ("pattern", "example"),
    [
        ("INC-[0-9]+", "INC-123"),
        (r"INC-\d{4,6}", "INC-1234"),
        ("(INC|SEV)-[0-9]+", "INC-123"),
        ("JIRA-[1-9][0-9]*", "JIRA-1234"),
        (r"(?i)inc-\d+", "inc-123"),
        ("[^x]+", None),  # too clever for the generator: the regex alone is shown
        ("(?=a)b", None),
        (r"INC-\d{41}", "INC-" + "1234567890" * 4 + "1"),  # more digits than one round: was a 500
    ],
)
def test_incident_examples(pattern: str, example: str | None) -> None:
    assert example_of(pattern) == example


def test_the_user_guide_lists_the_same_event_types() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "user-guide.md").read_text()
    paragraph = guide.split("**Audit event types:**", 1)[1].split("\n\n", 1)[0]
    assert re.findall(r"`([a-z_.]+)`", paragraph) == list(AUDIT_EVENTS)
