"""Per-process metrics registry and the /metrics, /healthz, /readyz endpoints.

The registry is passed explicitly; nothing registers on prometheus' global default.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

__all__ = ["ops_routes", "serve_ops", "EmbeddedServer"]


def ops_routes(app: FastAPI, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
    """Add /metrics, /healthz and /readyz to an app."""

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        # OpenMetrics when the scraper asks for it (Prometheus does, with exemplars on):
        # the latency histograms' exemplars carry each observation's trace id.
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            return Response(
                openmetrics.generate_latest(registry), media_type=openmetrics.CONTENT_TYPE_LATEST
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(response: Response) -> dict[str, str]:
        if ready():
            return {"status": "ready"}
        response.status_code = 503
        return {"status": "starting"}


async def serve_ops(
    host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool]
) -> None:
    """Serve the ops endpoints of a consumer process until cancelled (port 0: do nothing)."""
    if not port:
        await asyncio.Event().wait()
        return
    app = FastAPI(title="lanes ops", docs_url=None, redoc_url=None, openapi_url=None)
    ops_routes(app, registry, ready)
    server = EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
    try:
        await server.serve()
    finally:
        server.should_exit = True


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a process that owns its signals (we drain on SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
