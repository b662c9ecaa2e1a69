"""Routes about the broker itself and the caller: health, metrics, the public login
configuration, who am I, and what may I request."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from dbaccess import __version__
from dbaccess.broker.api.deps import ContextDep, PrincipalDep, ServiceDep, VerifierDep
from dbaccess.broker.services import refusals
from dbaccess.wire import Identity, PublicConfig, TargetAccess

router = APIRouter()


@router.get("/healthz")
def healthz(ctx: ContextDep, verifier: VerifierDep) -> JSONResponse:
    # 503 only for the store: without it nothing can be issued or revoked. An
    # unreachable identity provider is reported but stays 200 — the broker still
    # serves every token whose key it knows, and revokes on time.
    failure = ctx.store.health()
    store_state = {"status": "ok"} if failure is None else {"status": "failing", "error": failure}
    return JSONResponse(
        {
            "status": "ok" if failure is None else "failing",
            "store": store_state,
            "identity": verifier.keys.status(),
        },
        status_code=200 if failure is None else 503,
    )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, ctx: ContextDep) -> Response:
    token = ctx.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # the header's bytes (Starlette decodes them as latin-1) against the token's: bytes,
        # since compare_digest refuses a str that is not ASCII (a 500)
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("latin-1"), token
        ):
            raise refusals.Unauthenticated(
                "metrics_token",
                "GET /metrics needs the metrics token ([broker] metrics_token_env or _file)",
                "send Authorization: Bearer <token> (Prometheus: authorization.credentials_file)",
            )
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/config", response_model=PublicConfig)
def public_config(request: Request) -> PublicConfig:
    # The identity the broker started with: its token verifier is built from it.
    identity = request.app.state.identity
    return PublicConfig(
        issuer=identity.issuer,
        client_id=identity.client_id,
        scopes=identity.scopes,
        kind=identity.kind,
        broker_version=__version__,
    )


@router.get("/v1/me", response_model=Identity)
def me(who: PrincipalDep) -> Identity:
    # the address the broker keeps and shows for the caller: a verified one only
    return Identity(
        subject=who.subject, email=who.verified_email, name=who.name, groups=sorted(who.groups)
    )


@router.get("/v1/targets", response_model=list[TargetAccess])
def list_targets(service: ServiceDep, who: PrincipalDep) -> list[TargetAccess]:
    return service.targets.visible_to(who)
