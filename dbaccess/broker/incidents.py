"""An incident's own window, for its review: when the incident source of ``[review]
incidents`` (a PagerDuty ``[[oncall]]`` source) says it was opened and resolved.

The break-glass requests only tell when access began; the source tells when the incident
did, so a session or a statement before it opened or after it was resolved is flagged.
A source that is down or does not know the incident gives no window and a note saying
why: the review falls back to the break-glass window, it never fails for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dbaccess.broker.oncall import SourceUnavailable, fetch_incident
from dbaccess.broker.settings import OncallSource, Settings
from dbaccess.text import one_line


@dataclass(frozen=True)
class IncidentWindow:
    source: str  # the [[oncall]] source's name
    id: str  # as the source knows it
    title: str
    status: str
    opened: datetime
    closed: datetime | None  # None: not resolved
    url: str | None


def incident_window(
    settings: Settings,
    incident: str,
    fetch: Callable[[OncallSource, str], dict[str, Any]] = fetch_incident,
) -> tuple[IncidentWindow | None, str | None]:
    """The incident's window and None, or None and why there is none; (None, None) when
    no source is configured."""
    wanted = settings.review.incidents
    if wanted is None:
        return None, None
    (source,) = [s for s in settings.oncall if s.name == wanted]
    match = re.fullmatch(settings.review.incident_id, incident)
    if match is None or not match.group(1):
        return None, f"'{one_line(incident, 60)}' does not name an incident of '{wanted}'"
    try:
        found = fetch(source, match.group(1))
        return _window(wanted, found), None
    except SourceUnavailable as exc:
        return None, f"the incident source '{wanted}' did not answer ({exc})"
    except (KeyError, TypeError, ValueError):
        return None, f"the incident source '{wanted}' answered something else than an incident"


def _window(source: str, found: dict[str, Any]) -> IncidentWindow:
    status = str(found.get("status", ""))
    closed = _when(found.get("resolved_at"))
    if closed is None and status == "resolved":  # older replies: the last status change
        closed = _when(found.get("last_status_change_at"))
    opened = _when(found["created_at"])
    if opened is None:
        raise ValueError("no created_at")
    number = found.get("incident_number")
    return IncidentWindow(
        source=source,
        id=one_line(str(found.get("id", "")), 40) + (f" (#{int(number)})" if number else ""),
        title=one_line(str(found.get("title", "")), 200),
        status=one_line(status, 20),
        opened=opened,
        closed=closed,
        url=str(found["html_url"])
        if str(found.get("html_url", "")).startswith("https://")
        else None,
    )


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
