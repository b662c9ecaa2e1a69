"""The handlers that turn every failure into the error envelope ``{"error": {code, message,
hint}}``: a refusal (``STATUS``, the one table from kind to HTTP status), a validation
error, a missing route, a failing store, the broker's own set-up, or a bug."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dbaccess.broker.api import body_limit
from dbaccess.broker.services import refusals
from dbaccess.broker.store import StoreUnavailable
from dbaccess.errors import DbaccessError

log = logging.getLogger("dbaccess.broker")


# Every kind of refusal (services/refusals.py) and the status it answers with.
STATUS: dict[type[refusals.Refusal], int] = {
    refusals.Malformed: 400,
    refusals.Unauthenticated: 401,
    refusals.Denied: 403,
    refusals.NotFound: 404,
    refusals.Conflict: 409,
    refusals.Invalid: 422,
    refusals.OverLimit: 429,
    refusals.TargetFailed: 502,
    refusals.Unavailable: 503,
    refusals.TargetTimeout: 504,
}


def status_of(refusal: refusals.Refusal) -> int:
    """The status of ``refusal``'s kind (or of the nearest kind it derives from)."""
    return next((STATUS[kind] for kind in type(refusal).__mro__ if kind in STATUS), 500)


def error_response(status: int, code: str, message: str, hint: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "hint": hint}}, status_code=status
    )


def install_handlers(app: FastAPI) -> None:
    """Every failure answers with the envelope the CLI shows (message and hint)."""

    @app.exception_handler(refusals.Refusal)
    async def _refused(_: Request, exc: refusals.Refusal) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.message, exc.hint)

    @app.exception_handler(DbaccessError)
    async def _cannot_serve(_: Request, exc: DbaccessError) -> JSONResponse:
        # The broker's own set-up failed (e.g. a provisioner password that is not where the
        # config says): the request was fine, the broker cannot serve it now. The envelope,
        # not a plain-text 500; the operator finds the same words in the log.
        log.error("cannot serve a request", extra={"error": exc.message})
        return error_response(503, "broker_unavailable", exc.message, exc.hint)

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No route matched (e.g. an id with a "/" in it): the envelope, not FastAPI's bare
        # {"detail"}, so the CLI can say more than "the broker answered 404".
        if exc.status_code == 404:
            return error_response(
                404,
                "not_found",
                f"there is nothing at {request.method} {request.url.path}",
                "ids are hex digits and dashes: dbaccess sessions / dbaccess requests list them",
            )
        if exc.status_code == 413:
            return error_response(413, "request_too_large", str(exc.detail), body_limit.HINT)
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(StoreUnavailable)
    async def _store_failed(request: Request, exc: StoreUnavailable) -> JSONResponse:
        # Nothing was recorded, so nothing was handed out (a password leaves only after
        # its lease and audit records are on disk).
        request.app.state.service.ctx.metrics.store_errors.inc()
        return error_response(
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
        return error_response(
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
        return error_response(422, "invalid_request", "; ".join(parts))
