"""The broker's ASGI application (FastAPI): ``create_app`` wires settings to the services
and mounts the routes (api/routes/, one module per resource, over api/deps.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from dbaccess import __version__
from dbaccess.broker.api.arrival import StampArrival
from dbaccess.broker.api.body_limit import BodyLimit
from dbaccess.broker.api.errors import install_handlers
from dbaccess.broker.api.routes import audit, breakglass, meta, requests, sessions, web
from dbaccess.broker.capacity import log_capacity_warnings
from dbaccess.broker.checks import log_server_problems
from dbaccess.broker.engines import Engine, engine_for
from dbaccess.broker.identity import TokenVerifier
from dbaccess.broker.metrics import live_sessions_by_target
from dbaccess.broker.reaper import Reaper
from dbaccess.broker.services.context import BrokerContext
from dbaccess.broker.services.sessions import SessionService
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.broker.store import Store
from dbaccess.broker.web_signin import SignIn, WebSessions
from dbaccess.errors import DbaccessError

log = logging.getLogger("dbaccess.broker")


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    engines: Mapping[str, Engine] | None = None,
    verifier: TokenVerifier | None = None,
    run_reaper: bool = True,
    config_path: Path | None = None,
) -> FastAPI:
    # before anything is opened: a missing or empty token fails the start, not each scrape
    metrics_token = settings.broker.read_metrics_token()
    store = store or Store(settings.broker.store_url())
    engines = engines or {name: engine_for(name, t) for name, t in settings.targets.items()}
    # The store keeps the provider's last good key set: a restart while the provider is
    # unreachable still accepts valid tokens.
    verifier = verifier or TokenVerifier(settings.identity, keeper=store)
    ctx = BrokerContext.build(settings, store, engines)
    ctx.metrics_token = metrics_token
    service = SessionService(ctx)
    ctx.metrics.watch_live_sessions(
        lambda: live_sessions_by_target(ctx.store, list(ctx.settings.targets))
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = Reaper(
            service,
            settings.broker.reaper_interval.total_seconds(),
            settings.broker.reconcile_interval.total_seconds(),
        )
        if run_reaper:
            reaper.start()
            threading.Thread(
                target=log_server_problems,
                args=(settings.targets,),
                name="server-settings-check",
                daemon=True,
            ).start()
            check_capacity(settings)
        verifier.keys.refresh()  # in the background: a kept key set is replaced soon
        if settings.notify.webhooks:
            ctx.notifier.start()  # also sends what a previous run left in the outbox
        if config_path is not None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(
                signal.SIGHUP, reload_settings, ctx, config_path, service.revocation.withdraw
            )
        try:
            yield
        finally:
            if config_path is not None:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if run_reaper:
                reaper.stop()
            for engine in ctx.engines.values():
                engine.close()
            ctx.notifier.close()

    app = FastAPI(title="dbaccess broker", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit)
    app.add_middleware(StampArrival)  # added last, so it runs first
    # What the routes' dependencies (api/deps.py) hand them.
    app.state.service = service
    app.state.verifier = verifier
    app.state.identity = settings.identity
    install_handlers(app)
    for routes in (meta, audit, sessions, requests, breakglass):
        app.include_router(routes.router)
    if settings.web is not None:  # approvals from a browser (routes/web.py)
        key = settings.web.cookie_key.ensure().encode()  # every replica signs with the same
        app.state.web_sessions = WebSessions(key, settings.web.session.total_seconds())
        app.state.web_sign_in = SignIn(settings.identity, settings.web, keeper=store)
        app.include_router(web.router)
    return app


def app_from_env() -> FastAPI:
    """App factory for ``serve --workers N``: each worker process builds its own app from
    the file named by DBACCESS_BROKER_CONFIG. On SIGHUP uvicorn's supervisor starts fresh
    workers and retires the old ones only once the new ones are up, so an invalid file
    leaves the running workers (and the running configuration) in place."""
    path = Path(os.environ["DBACCESS_BROKER_CONFIG"])
    return create_app(load_settings(path, read_secrets=True))


def check_capacity(settings: Settings) -> None:
    """Log, in the background, when a server's connection budget does not fit its
    max_connections (as check-config warns); a server that does not answer delays nothing."""
    threading.Thread(
        target=log_capacity_warnings, args=(settings,), name="capacity-check", daemon=True
    ).start()


def reload_settings(
    ctx: BrokerContext, path: Path, withdraw: Callable[[Settings], int] | None = None
) -> bool:
    """Re-read ``path``; swap it in only if it is valid, then ``withdraw`` (in a thread) the
    live sessions it no longer grants. Engines of removed targets are kept to revoke them."""
    try:
        fresh = load_settings(path, read_secrets=True)
        metrics_token = fresh.broker.read_metrics_token()  # a new or rotated one counts now
    except DbaccessError as exc:
        log.error(
            "configuration reload refused; keeping the running one",
            extra={"config": str(path), "error": exc.message},
        )
        return False
    for name, target in fresh.targets.items():
        if ctx.settings.targets.get(name) != target:
            previous = ctx.engines.get(name)
            ctx.engines[name] = engine_for(name, target)
            if previous is not None:
                previous.close()
    ctx.settings = fresh
    ctx.metrics_token = metrics_token
    ctx.notifier.settings = fresh.notify
    if withdraw is not None:  # sessions the new policy no longer grants (gateway ends them too)
        threading.Thread(
            target=withdraw, args=(fresh,), name="policy-withdrawal", daemon=True
        ).start()
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
