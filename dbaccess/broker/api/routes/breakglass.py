"""Break-glass routes: the caller's policy, opening a session, and the post-incident
reviews of break-glass sessions."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from dbaccess.broker.api.deps import AnId, OriginDep, PrincipalDep, ServiceDep, granted
from dbaccess.wire import (
    BreakglassCreate,
    BreakglassPolicy,
    DrillInfo,
    IncidentReport,
    ReviewClose,
    ReviewInfo,
    SessionGranted,
)

router = APIRouter()

AnIncident = Annotated[str, Path(max_length=100)]  # leases.incident


@router.get("/v1/breakglass", response_model=BreakglassPolicy)
def breakglass_policy(service: ServiceDep, who: PrincipalDep) -> BreakglassPolicy:
    return service.breakglass.policy_for(who)


@router.post("/v1/breakglass", status_code=201, responses={201: {"model": SessionGranted}})
def breakglass(
    body: BreakglassCreate, service: ServiceDep, who: PrincipalDep, origin: OriginDep
) -> JSONResponse:
    return granted(service.breakglass.open(who, body, origin))


@router.get("/v1/reviews", response_model=list[ReviewInfo])
def list_reviews(service: ServiceDep, who: PrincipalDep) -> list[ReviewInfo]:
    return service.breakglass.open_reviews(who)


@router.post("/v1/reviews/{session_id}/close", response_model=ReviewInfo)
def close_review(
    session_id: AnId,
    body: ReviewClose,
    service: ServiceDep,
    who: PrincipalDep,
    origin: OriginDep,
) -> ReviewInfo:
    return service.breakglass.close_review(who, session_id, body.note, origin)


@router.get(
    "/v1/incidents/{incident}/review",
    response_model=IncidentReport,
    responses={200: {"content": {"text/markdown": {}, "text/html": {}}}},
)
def incident_review(
    incident: AnIncident,
    service: ServiceDep,
    who: PrincipalDep,
    format: Annotated[Literal["json", "md", "html"], Query()] = "json",
) -> IncidentReport | Response:
    """The post-incident record of ``incident``: its break-glass sessions, their
    approvals, endings, statements and chains, and the flags (reviewer groups); as
    JSON, Markdown or one self-contained HTML page with a timeline."""
    report = service.incidents.report(who, incident)
    if format == "json":
        return report
    from dbaccess.broker.review_report import render

    media = "text/html" if format == "html" else "text/markdown"
    return Response(render(report, format), media_type=f"{media}; charset=utf-8")


@router.get("/v1/drills", response_model=list[DrillInfo])
def drills(service: ServiceDep, who: PrincipalDep) -> list[DrillInfo]:
    """Everyone who has broken the glass, with their last drill and whether one is
    overdue under ``[breakglass] drill_every`` (reviewer groups)."""
    return service.breakglass.drills(who)
