"""The FastAPI application: its lifespan runs the :class:`~aetherion.pipeline.Runtime`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from aetherion import __version__
from aetherion.api import dashboard, decision, market, regime
from aetherion.api.params import UnknownMarket
from aetherion.api.security import ApiKeyMiddleware, WebSocketGate
from aetherion.config import Settings
from aetherion.pipeline import Runtime

__all__ = ["DOCS_ASSETS", "create_app"]

DOCS_ASSETS = "/static/docs"


def create_app(settings: Settings) -> FastAPI:
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await runtime.start()
            yield
        finally:
            await runtime.stop()

    # /docs and /redoc load Swagger UI and ReDoc from files in the fastapi-offline package, not a
    # CDN, so they work with no network. Served under /static/ like the dashboard's assets: open
    # with AETHERION_API_KEY set (they hold no data); the pages and /openapi.json need the key.
    app = FastAPIOffline(title="AETHERION", version=__version__, lifespan=lifespan,
                         static_url=DOCS_ASSETS)
    app.state.settings = settings
    app.state.runtime = runtime

    @app.exception_handler(UnknownMarket)
    async def unknown_market(request: Request, exc: UnknownMarket) -> JSONResponse:
        return JSONResponse(
            {"detail": f"unknown market {exc.market!r}", "known_markets": exc.known},
            status_code=404,
        )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Ready when both stores answer and every market is live or warming up."""
        problems = await runtime.readiness()
        body = {"status": "not ready" if problems else "ready", "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)

    app.include_router(market.router)
    app.include_router(market.ws_router)
    app.include_router(regime.router)
    app.include_router(regime.ws_router)
    app.include_router(decision.router)
    app.include_router(decision.ws_router)
    app.include_router(dashboard.router)
    # Outermost last: CORS answers preflights before the key is asked for; the gate counts only
    # WebSockets that passed the key check.
    app.add_middleware(WebSocketGate, origins=settings.ws_origins,
                       max_clients=settings.ws_max_clients, counts=runtime.ws_counts)
    app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET"], allow_headers=["X-API-Key", "Authorization"])
    return app
