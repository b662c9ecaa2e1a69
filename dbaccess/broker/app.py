"""The broker's ASGI application (FastAPI). ``create_app`` wires settings to services."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as InPath
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from dbaccess import __version__
from dbaccess.audit_events import AUDIT_EVENTS
from dbaccess.broker import body_limit
from dbaccess.broker.api_errors import ApiError
from dbaccess.broker.audit_pages import make_cursor, read_cursor
from dbaccess.broker.body_limit import BodyLimit
from dbaccess.broker.capacity import log_capacity_warnings
from dbaccess.broker.checks import log_mariadb_server_problems
from dbaccess.broker.engines import Engine, engine_for
from dbaccess.broker.identity import (
    IdentityUnavailable,
    InvalidToken,
    Principal,
    TokenVerifier,
)
from dbaccess.broker.metrics import live_sessions_by_target
from dbaccess.broker.policy import DEFAULT_DURATION, entitlements
from dbaccess.broker.reaper import Reaper
from dbaccess.broker.sessions import Origin, SessionService
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.broker.store import Store, StoreUnavailable
from dbaccess.errors import DbaccessError
from dbaccess.models import (
    AuditEntry,
    BreakglassCreate,
    BreakglassPolicy,
    Identity,
    PublicConfig,
    RequestDecision,
    RequestInfo,
    ReviewClose,
    ReviewInfo,
    SessionCreate,
    SessionGranted,
    SessionInfo,
    SessionRenew,
    SessionRenewed,
    TargetAccess,
)

_bearer = HTTPBearer(auto_error=False)
# GET /v1/audit: records per page, by default and at most; the next page's cursor header
AUDIT_PAGE_DEFAULT = 100
AUDIT_PAGE_MAX = 1000
NEXT_CURSOR = "X-Next-Cursor"
log = logging.getLogger("dbaccess.broker")

# A session or request id, or a prefix of one (broker/ids.py): at most a whole UUID.
AnId = Annotated[str, InPath(max_length=36)]


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    engines: Mapping[str, Engine] | None = None,
    verifier: TokenVerifier | None = None,
    run_reaper: bool = True,
    config_path: Path | None = None,
) -> FastAPI:
    store = store or Store(settings.broker.store_url())
    engines = engines or {name: engine_for(name, t) for name, t in settings.targets.items()}
    # The store keeps the provider's last good key set: a restart while the provider is
    # unreachable still accepts valid tokens.
    verifier = verifier or TokenVerifier(settings.identity, keeper=store)
    service = SessionService(settings, store, engines)
    service.metrics.watch_live_sessions(
        lambda: live_sessions_by_target(service.store, list(service.settings.targets)))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = Reaper(
            service,
            settings.broker.reaper_interval.total_seconds(),
            settings.broker.reconcile_interval.total_seconds(),
        )
        if run_reaper:
            reaper.start()
            threading.Thread(target=log_mariadb_server_problems, args=(settings.targets,),
                             name="mariadb-settings-check", daemon=True).start()
            check_capacity(settings)
        verifier.keys.refresh()  # in the background: a kept key set is replaced soon
        if settings.notify.webhooks:
            service.notifier.start()  # also sends what a previous run left in the outbox
        if config_path is not None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, reload_settings, service, config_path)
        try:
            yield
        finally:
            if config_path is not None:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if run_reaper:
                reaper.stop()
            for engine in service.engines.values():
                engine.close()
            service.notifier.close()

    app = FastAPI(title="dbaccess broker", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.hint)

    @app.exception_handler(DbaccessError)
    async def _cannot_serve(_: Request, exc: DbaccessError) -> JSONResponse:
        # The broker's own set-up failed (e.g. a provisioner password that is not where the
        # config says): the request was fine, the broker cannot serve it now. The envelope,
        # not a plain-text 500; the operator finds the same words in the log.
        log.error("cannot serve a request", extra={"error": exc.message})
        return _error(503, "broker_unavailable", exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No route matched (e.g. an id with a "/" in it): the envelope, not FastAPI's bare
        # {"detail"}, so the CLI can say more than "the broker answered 404".
        if exc.status_code == 404:
            return _error(
                404,
                "not_found",
                f"there is nothing at {request.method} {request.url.path}",
                "ids are hex digits and dashes: dbaccess sessions / dbaccess requests list them",
            )
        if exc.status_code == 413:
            return _error(413, "request_too_large", str(exc.detail), body_limit.HINT)
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(StoreUnavailable)
    async def _store_failed(_: Request, exc: StoreUnavailable) -> JSONResponse:
        # Nothing was recorded, so nothing was handed out (a password leaves only after
        # its lease and audit records are on disk).
        return _error(
            503,
            "store_unavailable",
            str(exc),
            "nothing was recorded or handed out; try again in a minute. Operators: "
            "GET /healthz shows the store's state (a full or failing disk, a store server "
            "that is down)",
        )

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        # Anything else: still the envelope (the CLI shows message and hint), never a bare
        # "Internal Server Error". Starlette logs the traceback after this answer.
        return _error(
            500,
            "internal_error",
            f"the broker failed on {request.method} {request.url.path} ({type(exc).__name__})",
            "try again; if it keeps failing, the broker's log has the details",
        )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
        ]
        return _error(422, "invalid_request", "; ".join(parts))

    async def principal(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        # async, so a token seen before costs no thread hop; a new one is verified in the
        # thread pool, since fetching the issuer's keys is blocking I/O.
        if credentials is None:
            raise ApiError(401, "not_logged_in", "this call needs a bearer token", "dbaccess login")
        known = verifier.cached(credentials.credentials)
        if known is not None:
            return known
        try:
            return await run_in_threadpool(verifier.verify, credentials.credentials)
        except InvalidToken as exc:
            raise ApiError(401, "invalid_token", str(exc), "dbaccess login") from None
        except IdentityUnavailable as exc:
            # Not "log in again": the login needs the same provider.
            raise ApiError(
                503,
                "identity_provider_unreachable",
                str(exc),
                "your login is not the problem; try again in a minute. Operators: check "
                "that the broker reaches the identity provider (GET /healthz shows it)",
            ) from None

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        # 503 only for the store: without it nothing can be issued or revoked. An
        # unreachable identity provider is reported but stays 200 — the broker still
        # serves every token whose key it knows, and revokes on time.
        failure = service.store.health()
        store_state = {"status": "ok"} if failure is None else {
            "status": "failing", "error": failure}
        return JSONResponse(
            {
                "status": "ok" if failure is None else "failing",
                "store": store_state,
                "identity": verifier.keys.status(),
            },
            status_code=200 if failure is None else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/config", response_model=PublicConfig)
    def public_config() -> PublicConfig:
        return PublicConfig(
            issuer=settings.identity.issuer,
            client_id=settings.identity.client_id,
            scopes=settings.identity.scopes,
            kind=settings.identity.kind,
            broker_version=__version__,
        )

    @app.get("/v1/me", response_model=Identity)
    def me(who: Principal = Depends(principal)) -> Identity:
        return Identity(
            subject=who.subject, email=who.email, name=who.name, groups=sorted(who.groups)
        )

    @app.get("/v1/targets", response_model=list[TargetAccess])
    def list_targets(who: Principal = Depends(principal)) -> list[TargetAccess]:
        current = service.settings
        return [
            TargetAccess(
                target=target,
                engine=current.targets[target].engine,
                role=role,
                max_duration_seconds=int(rule.max_duration.total_seconds()),
                default_duration_seconds=int(
                    min(
                        rule.default_duration or DEFAULT_DURATION, rule.max_duration
                    ).total_seconds()
                ),
                reason_required=rule.require_reason,
                ticket_pattern=rule.ticket_pattern,
                approvals=rule.approvals,
            )
            for target, role, rule in entitlements(
                who, current.rules, {n: list(t.roles) for n, t in current.targets.items()}
            )
        ]

    @app.get(
        "/v1/audit",
        response_model=list[AuditEntry],
        responses={200: {"headers": {NEXT_CURSOR: {
            "description": "present when older records match: pass it as ?before= for "
            "the next page", "schema": {"type": "string"}}}}},
    )
    def read_audit(
        response: Response,
        since: datetime | None = None,
        user: Annotated[str | None, Query(max_length=320)] = None,  # an email's longest
        target: Annotated[str | None, Query(max_length=64)] = None,
        type: Annotated[str | None, Query(max_length=64)] = None,  # noqa: A002 - public name
        before: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = AUDIT_PAGE_DEFAULT,
        who: Principal = Depends(principal),
    ) -> list[AuditEntry]:
        """The newest records first; every filter applies before ``limit``. When older
        records match, the ``X-Next-Cursor`` header carries the cursor of the next page."""
        if not who.groups & set(service.settings.broker.auditor_groups):
            raise ApiError(
                403,
                "denied",
                "reading the audit trail needs an auditor group",
                "ask for membership of an auditor group",
            )
        if type is not None and type not in AUDIT_EVENTS:
            raise ApiError(
                422,
                "invalid_request",
                f"type: '{type}' is not an audit event type",
                f"one of: {', '.join(AUDIT_EVENTS)}",
            )
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        filters: dict[str, object] = {
            "since": since.isoformat() if since else None,
            "user": user,
            "target": target,
            "type": type,
        }
        start = read_cursor(before, filters) if before is not None else None
        # A person is a subject or an email: an email stands for every subject that has
        # used it (the trail is keyed by subject, which people rarely know by heart).
        people = None if user is None else service.store.subjects_known_as(user)
        records, older = service.store.audit_page(
            limit=limit, before=start, since=since, subjects=people, event=type, target=target
        )
        if older is not None:
            response.headers[NEXT_CURSOR] = make_cursor(older, filters)
        return [
            AuditEntry(
                seq=r.seq,
                at=r.at,
                event=r.event,
                subject=r.subject,
                lease_id=r.lease_id,
                detail=r.detail,
            )
            for r in records
        ]

    @app.post(
        "/v1/sessions",
        status_code=201,
        responses={
            201: {"model": SessionGranted, "description": "the session, password included"},
            202: {"model": RequestInfo, "description": "approval needed: the new request"},
        },
    )
    def create_session(
        body: SessionCreate, request: Request, who: Principal = Depends(principal)
    ) -> JSONResponse:
        outcome = service.create(who, body, _origin(request))
        if isinstance(outcome, SessionGranted):
            return _granted(outcome)
        info = service.approvals.info(who, outcome)
        return JSONResponse(info.model_dump(mode="json"), status_code=202)

    @app.get("/v1/requests", response_model=list[RequestInfo])
    def list_requests(mine: bool = False, who: Principal = Depends(principal)) -> list[RequestInfo]:
        return service.approvals.visible_to(who, mine=mine)

    @app.get("/v1/requests/{request_id}", response_model=RequestInfo)
    def get_request(request_id: AnId, who: Principal = Depends(principal)) -> RequestInfo:
        return service.approvals.get(who, request_id)

    @app.post("/v1/requests/{request_id}/approve", response_model=RequestInfo)
    def approve_request(
        request_id: AnId, request: Request, who: Principal = Depends(principal)
    ) -> RequestInfo:
        return service.approvals.approve(who, request_id, _origin(request))

    @app.post("/v1/requests/{request_id}/withdraw", response_model=RequestInfo)
    def withdraw_request(
        request_id: AnId, request: Request, who: Principal = Depends(principal)
    ) -> RequestInfo:
        return service.approvals.withdraw(who, request_id, _origin(request))

    @app.post("/v1/requests/{request_id}/deny", response_model=RequestInfo)
    def deny_request(
        request_id: AnId,
        body: RequestDecision,
        request: Request,
        who: Principal = Depends(principal),
    ) -> RequestInfo:
        if not (body.reason or "").strip():
            raise ApiError(422, "invalid_request", "a denial needs a reason", "--reason TEXT")
        return service.approvals.deny(
            who, request_id, (body.reason or "").strip(), _origin(request)
        )

    @app.get("/v1/breakglass", response_model=BreakglassPolicy)
    def breakglass_policy(who: Principal = Depends(principal)) -> BreakglassPolicy:
        return service.breakglass.policy_for(who)

    @app.post("/v1/breakglass", status_code=201, responses={201: {"model": SessionGranted}})
    def breakglass(
        body: BreakglassCreate, request: Request, who: Principal = Depends(principal)
    ) -> JSONResponse:
        return _granted(service.breakglass.open(who, body, _origin(request)))

    @app.get("/v1/reviews", response_model=list[ReviewInfo])
    def list_reviews(who: Principal = Depends(principal)) -> list[ReviewInfo]:
        return service.breakglass.open_reviews(who)

    @app.post("/v1/reviews/{session_id}/close", response_model=ReviewInfo)
    def close_review(
        session_id: AnId, body: ReviewClose, request: Request, who: Principal = Depends(principal)
    ) -> ReviewInfo:
        return service.breakglass.close_review(who, session_id, body.note, _origin(request))

    @app.get("/v1/sessions", response_model=list[SessionInfo])
    def list_sessions(who: Principal = Depends(principal)) -> list[SessionInfo]:
        return service.list_for(who)

    @app.post("/v1/sessions/{session_id}/renew", response_model=SessionRenewed)
    def renew_session(
        session_id: AnId, body: SessionRenew, request: Request, who: Principal = Depends(principal)
    ) -> SessionRenewed:
        return service.renew_for(who, session_id, body, _origin(request))

    @app.delete("/v1/sessions/{session_id}", response_model=SessionInfo)
    def revoke_session(
        session_id: AnId, request: Request, who: Principal = Depends(principal)
    ) -> SessionInfo:
        return service.revoke_for(who, session_id, _origin(request))

    return app


def app_from_env() -> FastAPI:
    """App factory for ``serve --workers N``: each worker process builds its own app from
    the file named by DBACCESS_BROKER_CONFIG. On SIGHUP uvicorn's supervisor starts fresh
    workers and retires the old ones only once the new ones are up, so an invalid file
    leaves the running workers (and the running configuration) in place."""
    path = Path(os.environ["DBACCESS_BROKER_CONFIG"])
    settings = load_settings(path)
    for target in settings.targets.values():
        target.provisioner.read_password()
    return create_app(settings)


def check_capacity(settings: Settings) -> None:
    """Log, in the background, when a server's connection budget does not fit its
    max_connections (as check-config warns); a server that does not answer delays nothing."""
    threading.Thread(target=log_capacity_warnings, args=(settings,),
                     name="capacity-check", daemon=True).start()


def reload_settings(service: SessionService, path: Path) -> bool:
    """Re-read ``path``; swap it in only if it is valid. Live sessions are untouched: their
    leases stay in the store, and engines of removed targets are kept to revoke them."""
    try:
        fresh = load_settings(path)
        for target in fresh.targets.values():
            target.provisioner.read_password()
    except DbaccessError as exc:
        log.error(
            "configuration reload refused; keeping the running one",
            extra={"config": str(path), "error": exc.message},
        )
        return False
    for name, target in fresh.targets.items():
        if service.settings.targets.get(name) != target:
            previous = service.engines.get(name)
            service.engines[name] = engine_for(name, target)
            if previous is not None:
                previous.close()
    service.settings = fresh
    service.notifier.settings = fresh.notify
    check_capacity(fresh)  # the caps or the targets may have changed
    log.info(
        "configuration reloaded",
        extra={
            "config": str(path),
            "targets": sorted(fresh.targets),
            "rules": [r.name for r in fresh.rules],
        },
    )
    return True


def _origin(request: Request) -> Origin:
    return Origin(
        source=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:255] or None,
    )


def _granted(granted: SessionGranted) -> JSONResponse:
    # Serialised by hand so the password is revealed only in this response body.
    return JSONResponse(
        granted.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"}
    )


def _error(status: int, code: str, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "hint": hint}}, status_code=status
    )
