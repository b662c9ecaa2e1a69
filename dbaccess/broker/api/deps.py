"""What the routes depend on, as FastAPI dependencies: the services (``ServiceDep``) and
their context (``ContextDep``: settings, store, metrics), the caller (``PrincipalDep``: a
verified bearer token) and where the call came from (``OriginDep``: read here, off the
request, into plain data). ``create_app`` puts the service and the token verifier on
``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as InPath
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dbaccess.broker.api.arrival import received_at
from dbaccess.broker.identity import IdentityUnavailable, InvalidToken, Principal, TokenVerifier
from dbaccess.broker.services import refusals
from dbaccess.broker.services.context import BrokerContext, Origin
from dbaccess.broker.services.sessions import SessionService
from dbaccess.wire import SessionGranted

_bearer = HTTPBearer(auto_error=False)

# A session or request id, or a prefix of one (services/ids.py): at most a whole UUID.
AnId = Annotated[str, InPath(max_length=36)]


def service(request: Request) -> SessionService:
    return request.app.state.service  # type: ignore[no-any-return]


def context(request: Request) -> BrokerContext:
    return service(request).ctx


def verifier(request: Request) -> TokenVerifier:
    return request.app.state.verifier  # type: ignore[no-any-return]


async def principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Principal:
    # async, so a token seen before costs no thread hop; a new one is verified in the
    # thread pool, since fetching the issuer's keys is blocking I/O.
    if credentials is None:
        raise refusals.Unauthenticated(
            "not_logged_in", "this call needs a bearer token", "dbaccess login"
        )
    tokens = verifier(request)
    known = tokens.cached(credentials.credentials)
    if known is not None:
        return known
    try:
        return await run_in_threadpool(tokens.verify, credentials.credentials)
    except InvalidToken as exc:
        raise refusals.Unauthenticated("invalid_token", str(exc), "dbaccess login") from None
    except IdentityUnavailable as exc:
        # Not "log in again": the login needs the same provider.
        context(request).metrics.idp_unreachable.inc()
        raise refusals.Unavailable(
            "identity_provider_unreachable",
            str(exc),
            "your login is not the problem; try again in a minute. Operators: check "
            "that the broker reaches the identity provider (GET /healthz shows it)",
        ) from None


def origin(request: Request) -> Origin:
    return Origin(
        source=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:255] or None,
        received_at=received_at(request.scope),  # target_guard: the delivery deadline
        client_timeout=client_timeout(request.headers.get(TIMEOUT_HEADER)),
    )


TIMEOUT_HEADER = "Dbaccess-Timeout"  # the client's twin: client/replies.py request_headers
MAX_CLIENT_TIMEOUT = 3600.0


def client_timeout(raw: str | None) -> float | None:
    """Seconds the client waits for an answer, as it says; a value that is no such number
    (absent, not finite, not above 0, or above an hour) is as good as none: the header
    only ever shortens the delivery deadline, so ignoring it cannot widen anything."""
    if raw is None or len(raw) > 32:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 < value <= MAX_CLIENT_TIMEOUT else None


ServiceDep = Annotated[SessionService, Depends(service)]
ContextDep = Annotated[BrokerContext, Depends(context)]
VerifierDep = Annotated[TokenVerifier, Depends(verifier)]
PrincipalDep = Annotated[Principal, Depends(principal)]
OriginDep = Annotated[Origin, Depends(origin)]


def granted(session: SessionGranted) -> JSONResponse:
    # Serialised by hand so the password is revealed only in this response body.
    return JSONResponse(
        session.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"}
    )
