"""Session routes: ask for one (granted at once, or a request that needs approval), list
mine, renew, revoke; read a gateway session's statement records."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from dbaccess.broker.api.deps import AnId, OriginDep, PrincipalDep, ServiceDep, granted
from dbaccess.broker.services.statements import PAGE_DEFAULT, PAGE_MAX
from dbaccess.wire import (
    RequestInfo,
    SessionCreate,
    SessionGranted,
    SessionInfo,
    SessionRenew,
    SessionRenewed,
    StatementPage,
)

router = APIRouter()


@router.post(
    "/v1/sessions",
    status_code=201,
    responses={
        201: {"model": SessionGranted, "description": "the session, password included"},
        202: {"model": RequestInfo, "description": "approval needed: the new request"},
    },
)
def create_session(
    body: SessionCreate, service: ServiceDep, who: PrincipalDep, origin: OriginDep
) -> JSONResponse:
    outcome = service.create(who, body, origin)
    if isinstance(outcome, SessionGranted):
        return granted(outcome)
    return JSONResponse(outcome.model_dump(mode="json"), status_code=202)


@router.get("/v1/sessions", response_model=list[SessionInfo])
def list_sessions(service: ServiceDep, who: PrincipalDep) -> list[SessionInfo]:
    return service.list_for(who)


@router.post("/v1/sessions/{session_id}/renew", response_model=SessionRenewed)
def renew_session(
    session_id: AnId,
    body: SessionRenew,
    service: ServiceDep,
    who: PrincipalDep,
    origin: OriginDep,
) -> SessionRenewed:
    return service.renew_for(who, session_id, body, origin)


@router.delete("/v1/sessions/{session_id}", response_model=SessionInfo)
def revoke_session(
    session_id: AnId, service: ServiceDep, who: PrincipalDep, origin: OriginDep
) -> SessionInfo:
    return service.revoke_for(who, session_id, origin)


@router.get("/v1/sessions/{session_id}/statements", response_model=StatementPage)
def read_statements(
    session_id: AnId,
    service: ServiceDep,
    who: PrincipalDep,
    after: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
) -> StatementPage:
    """The statements a gateway session ran, oldest first, ``limit`` at a time after seq
    ``after``; with the chain's verification and its seal. For the session's owner and
    auditors (anyone else: 404, as for an unknown id)."""
    return service.statements.page(who, session_id, after=after, limit=limit)
