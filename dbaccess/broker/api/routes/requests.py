"""Approval request routes: list, show, approve, withdraw, deny."""

from __future__ import annotations

from fastapi import APIRouter

from dbaccess.broker.api.deps import AnId, OriginDep, PrincipalDep, ServiceDep
from dbaccess.wire import RequestDecision, RequestInfo

router = APIRouter()


@router.get("/v1/requests", response_model=list[RequestInfo])
def list_requests(service: ServiceDep, who: PrincipalDep, mine: bool = False) -> list[RequestInfo]:
    return service.approvals.visible_to(who, mine=mine)


@router.get("/v1/requests/{request_id}", response_model=RequestInfo)
def get_request(request_id: AnId, service: ServiceDep, who: PrincipalDep) -> RequestInfo:
    return service.approvals.get(who, request_id)


@router.post("/v1/requests/{request_id}/approve", response_model=RequestInfo)
def approve_request(
    request_id: AnId, service: ServiceDep, who: PrincipalDep, origin: OriginDep
) -> RequestInfo:
    return service.approvals.approve(who, request_id, origin)


@router.post("/v1/requests/{request_id}/withdraw", response_model=RequestInfo)
def withdraw_request(
    request_id: AnId, service: ServiceDep, who: PrincipalDep, origin: OriginDep
) -> RequestInfo:
    return service.approvals.withdraw(who, request_id, origin)


@router.post("/v1/requests/{request_id}/deny", response_model=RequestInfo)
def deny_request(
    request_id: AnId,
    body: RequestDecision,
    service: ServiceDep,
    who: PrincipalDep,
    origin: OriginDep,
) -> RequestInfo:
    return service.approvals.deny(who, request_id, body.reason, origin)
