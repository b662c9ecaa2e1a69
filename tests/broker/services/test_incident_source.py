"""An incident's own window in its review (issue 15, point 5): with ``[review] incidents``
naming a PagerDuty source, the review asks ``GET /incidents/{id}`` (a local HTTPS stand-in
serving PagerDuty's documented reply) and flags access before the incident was opened or
after it was resolved there; a source that is down leaves a note, never an error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbaccess.broker.api.app import create_app
from dbaccess.broker.review_report import render
from dbaccess.broker.settings import OncallSource, load_settings
from dbaccess.sandbox.stack import PROVISIONER_ENV, Stack
from dbaccess.wire import IncidentReport
from tests.broker.test_oncall_pagerduty import StandIn, pagerduty, stamp

pytestmark = pytest.mark.integration
__all__ = ["pagerduty"]  # the stand-in's fixture

HOSTILE_TITLE = 'orders <script>alert("t")</script> stuck'


def incident(
    created: datetime, resolved: datetime | None, title: str = "DB down"
) -> dict[str, Any]:
    return {
        "id": "Q1ABCDEF",
        "type": "incident",
        "incident_number": 4711,
        "title": title,
        "status": "resolved" if resolved else "triggered",
        "created_at": stamp(created),
        "resolved_at": stamp(resolved),
        "last_status_change_at": stamp(resolved or created),
        "html_url": "https://acme.pagerduty.com/incidents/Q1ABCDEF",
    }


@pytest.fixture
def review(
    stack: Stack,
    tmp_path: Path,
    tokens: dict[str, str],
    pagerduty: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[], IncidentReport]]:
    """carol breaks the glass for INC-4711 and ends it; the review, built on demand."""
    monkeypatch.setenv(PROVISIONER_ENV, stack.provisioner_password)
    settings = load_settings(stack.broker_config)
    settings = settings.model_copy(
        update={
            "broker": settings.broker.model_copy(
                update={"store": f"sqlite:///{tmp_path / 'broker.db'}"}
            ),
            "oncall": [OncallSource.model_validate(pagerduty)],
            "review": settings.review.model_copy(
                update={"incidents": "primary", "incident_id": r"INC-(\d+)"}
            ),
        }
    )
    with TestClient(create_app(settings, run_reaper=False)) as api:
        carol = {"Authorization": f"Bearer {tokens['carol']}"}
        opened = api.post(
            "/v1/breakglass",
            headers=carol,
            json={"target": "demo", "incident": "INC-4711", "reason": "orders stuck"},
        )
        assert opened.status_code == 201, opened.text
        assert api.delete(f"/v1/sessions/{opened.json()['id']}", headers=carol).status_code < 300

        def build() -> IncidentReport:
            got = api.get(
                "/v1/incidents/INC-4711/review",
                headers={"Authorization": f"Bearer {tokens['dave']}"},
            )
            assert got.status_code == 200, got.text
            return IncidentReport.model_validate(got.json())

        yield build


def kinds(report: IncidentReport) -> set[str]:
    return {flag.kind for flag in report.flags}


def test_the_incident_as_its_source_knows_it(review: Callable[[], IncidentReport]) -> None:
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    StandIn.incidents["4711"] = incident(created, None)
    report = review()
    source = report.incident_source
    assert source is not None and report.incident_source_note is None
    assert (source.source, source.id, source.status) == ("primary", "Q1ABCDEF (#4711)", "triggered")
    assert source.opened_at == created and source.closed_at is None
    assert not kinds(report) & {"before_incident", "after_incident"}
    text = render(report, "md")
    assert 'At primary: Q1ABCDEF (#4711) "DB down", triggered, opened' in text
    assert "not resolved" in text


def test_access_before_the_incident_opened_is_flagged(
    review: Callable[[], IncidentReport],
) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    StandIn.incidents["4711"] = incident(later, None)
    flags = [f for f in review().flags if f.kind == "before_incident"]
    assert flags and "before the incident was opened at primary" in flags[0].message


def test_access_after_the_incident_was_resolved_is_flagged(
    review: Callable[[], IncidentReport],
) -> None:
    earlier = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    StandIn.incidents["4711"] = incident(earlier, earlier + timedelta(minutes=30))
    report = review()
    assert "after_incident" in kinds(report)
    assert report.incident_source and report.incident_source.closed_at is not None


@pytest.mark.parametrize(
    ("mode", "note"),
    [("fail", "did not answer (HTTP 500)"), ("unknown", "did not answer (HTTP 404)")],
)
def test_a_source_that_cannot_say_leaves_a_note(
    review: Callable[[], IncidentReport], mode: str, note: str
) -> None:
    if mode == "fail":
        StandIn.mode = "fail"
    report = review()  # 200 all the same
    assert report.incident_source is None
    assert report.incident_source_note == f"the incident source 'primary' {note}"
    assert "Incident source: the incident source 'primary' " in render(report, "md")


def test_the_title_is_escaped_in_the_html_report(review: Callable[[], IncidentReport]) -> None:
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    StandIn.incidents["4711"] = incident(created, None, title=HOSTILE_TITLE)
    page = render(review(), "html")
    assert "<script>" not in page
    assert "orders &lt;script&gt;" in page
    assert 'href="https://acme.pagerduty.com/incidents/Q1ABCDEF"' in page


def test_review_incidents_must_name_a_pagerduty_source(stack: Stack, tmp_path: Path) -> None:
    settings = load_settings(stack.broker_config)
    data = settings.model_dump()
    data["oncall"] = [{"name": "primary", "ics": str(tmp_path / "x.ics")}]
    data["review"] = {"incidents": "primary"}
    with pytest.raises(ValueError, match="not an \\[\\[oncall\\]\\] source with pagerduty"):
        type(settings).model_validate(data)
