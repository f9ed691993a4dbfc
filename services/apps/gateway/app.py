"""The gateway's FastAPI app: routers (generations, events, images, admin, console) over
objects that own their background work (``GatewayViews``, ``Publisher``, ``Authenticator``),
each started and stopped by the app's lifespan and reached through ``deps``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.apps.console import console_router
from services.apps.gateway import admin, artifacts, events, generations, openai_api
from services.apps.gateway.auth import Authenticator
from services.apps.gateway.publisher import Publisher
from services.apps.gateway.views import GatewayViews
from services.apps.problems import install_problem_handlers
from services.config.routes import load_routes
from services.config.settings import Settings
from services.process.ops_server import ops_routes
from services.process.tracing import tracing_enabled
from services.storage.artifacts import open_store
from services.storage.outage import wait_out_outage

__all__ = ["create_app"]


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or CollectorRegistry()
    views = GatewayViews(settings, load_routes(settings.routes_file))
    auth = Authenticator(settings, registry)
    publisher = Publisher(settings, views.accepted, views.job, registry)
    store = open_store(settings)
    parts = (auth, views, publisher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # An unusable artifact store fails start-up with the reason (readiness never true).
        await wait_out_outage(
            store.check, bound_s=settings.storage.outage_wait_s, what="store check"
        )
        try:
            for part in parts:
                await part.start()
            app.state.started = True
            yield
        finally:
            app.state.started = False
            for part in reversed(parts):
                await part.stop()

    app = FastAPI(
        title="Lanes gateway",
        version="0.3.0",
        lifespan=lifespan,
        description="Image generation jobs. Every call to /v1 carries `Authorization: Bearer "
        "<API key>`; images are also served at signed URLs that need no key. Every error "
        "is an RFC 9457 problem (application/problem+json) whose detail says why.",
    )
    app.state.settings = settings
    app.state.views = views
    app.state.auth = auth
    app.state.publisher = publisher
    app.state.store = store
    app.state.started = False
    install_problem_handlers(app)
    ops_routes(app, registry, lambda: app.state.started and all(part.ready() for part in parts))
    routers = (generations, events, artifacts, admin, openai_api)
    for router in (module.router for module in routers):
        app.include_router(router)
    if settings.gateway.console_enabled:
        console_router(app, settings)
    if tracing_enabled():  # each request's span is the root of the job it submits
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="/healthz,/readyz,/metrics,/console/static"
        )
    return app
