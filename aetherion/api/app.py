"""The FastAPI application: its lifespan runs the :class:`~aetherion.pipeline.Runtime`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pymongo.server_type import SERVER_TYPE
from sqlalchemy import NullPool, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from aetherion import __version__
from aetherion.api import dashboard, decision, market, performance, regime
from aetherion.api.coalesce import Coalesce
from aetherion.api.params import UnknownMarket
from aetherion.api.publish import Streams
from aetherion.api.security import ApiKeyMiddleware, WebSocketGate
from aetherion.config import Settings
from aetherion.pipeline import Runtime
from aetherion.storage.market import MarketStore

__all__ = ["DOCS_ASSETS", "create_app"]

DOCS_ASSETS = "/static/docs"

# /readyz: how long a fresh connection may take before the store counts as unreachable, and how
# long the answer to a trivial query may take before the store counts as busy (not as down).
CONNECT_TIMEOUT_S = 3.0
ANSWER_TIMEOUT_S = 1.0

Verdict = tuple[str | None, str | None]  # (why it is down, why it is slow): both None when fine


def _why(e: BaseException) -> str:
    return (str(e).splitlines()[0][:200] if str(e) else "") or type(e).__name__


class StoreProbe:
    """Tells a store that is down from one that is busy.

    SQL: a connection of its own, outside the engine's pool (the pool's connections may all be
    checked out by history queries, and SQLite serialises work on each of them), opened fresh
    for each probe. Failing to connect (refused, no route, unresolvable, an unopenable SQLite
    file, or no connection within ``CONNECT_TIMEOUT_S``) is down; a connection that answers
    ``SELECT 1`` late is busy. MongoDB: the driver's ping; when it is late, the driver's own
    view of the server (its monitor connects separately from the operation pool) decides.
    """

    def __init__(self) -> None:
        self._engines: dict[str, AsyncEngine] = {}

    def _engine(self, engine: AsyncEngine) -> AsyncEngine:
        key = engine.url.render_as_string(hide_password=False)
        if key not in self._engines:
            self._engines[key] = create_async_engine(engine.url, poolclass=NullPool)
        return self._engines[key]

    async def sql(self, engine: AsyncEngine) -> Verdict:
        fresh = self._engine(engine)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                conn = await fresh.connect()
        except TimeoutError:
            return f"no connection within {CONNECT_TIMEOUT_S:g} s", None
        except Exception as e:  # refused, unresolvable, unopenable: all down
            return _why(e), None
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                await conn.execute(select(1))
        except TimeoutError:
            return None, f"connected, no answer within {ANSWER_TIMEOUT_S:g} s"
        except Exception as e:  # connected, then cut: down
            return _why(e), None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close())
        return None, None

    async def mongo(self, store: MarketStore) -> Verdict:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                await store.ping()
            return None, None
        except TimeoutError:
            pass
        except Exception as e:  # refused, selection failed: down
            return _why(e), None
        client = getattr(store, "client", None)
        if client is None:
            return None, f"no answer within {ANSWER_TIMEOUT_S:g} s"
        servers = client.topology_description.server_descriptions().values()
        known = [sd for sd in servers if sd.server_type != SERVER_TYPE.Unknown]
        if known:
            return None, f"no answer within {ANSWER_TIMEOUT_S:g} s"
        errors = [str(sd.error) for sd in servers if sd.error is not None]
        return (errors[0][:200] if errors else "no server reachable"), None

    async def close(self) -> None:
        for engine in self._engines.values():
            await engine.dispose()
        self._engines.clear()


async def readiness(runtime: Runtime, probe: StoreProbe) -> tuple[list[str], list[str]]:
    """Why the process is not ready (empty when it is), and which stores are merely busy."""
    problems: list[str] = []
    busy: list[str] = []
    stores = runtime.stores
    if stores is None:
        problems.append("starting: stores not open yet")
    else:
        sql = await probe.sql(stores.state.engine)
        if stores.market.name == "mongo":
            market = await probe.mongo(stores.market)
        else:
            market = sql  # the embedded market store: tables in the same database
        for name, (down, slow) in (("sql", sql), ("market store", market)):
            if down:
                problems.append(f"{name} unreachable: {down}")
            elif slow:
                busy.append(f"{name} busy: {slow}")
    for mid in runtime.markets:
        state = runtime.view(mid).status["state"]
        if state not in ("live", "connecting", "resyncing"):
            problems.append(f"market {mid} is {state}")
    return problems, busy


def create_app(settings: Settings) -> FastAPI:
    streams = Streams()
    runtime = Runtime(settings, streams)
    probe = StoreProbe()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await runtime.start()
            yield
        finally:
            await probe.close()
            await runtime.stop()

    # /docs and /redoc load Swagger UI and ReDoc from files in the fastapi-offline package, not a
    # CDN, so they work with no network. Served under /static/ like the dashboard's assets: open
    # with AETHERION_API_KEY set (they hold no data); the pages and /openapi.json need the key.
    app = FastAPIOffline(title="AETHERION", version=__version__, lifespan=lifespan,
                         static_url=DOCS_ASSETS)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.streams = streams

    @app.exception_handler(UnknownMarket)
    async def unknown_market(request: Request, exc: UnknownMarket) -> JSONResponse:
        return JSONResponse(
            {"detail": f"unknown market {exc.market!r}", "known_markets": exc.known},
            status_code=404,
        )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/cluster", tags=["ops"])
    async def cluster() -> dict[str, Any]:
        """The instances of the cluster (cluster mode, ``AETHERION_NATS_URL``): each one's id,
        heartbeat and markets, who owns each market and the age of its lease; in one process,
        ``mode: single``."""
        return runtime.cluster_status()

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Ready when both stores can be reached and every market is live or warming up.

        A store is down only when a connection to it cannot be made; a store that is reachable
        but slow to answer (queries queued behind others) is busy, listed under ``busy``, and
        still ready."""
        problems, busy = await readiness(runtime, probe)
        body: dict[str, object] = {"status": "not ready" if problems else "ready",
                                   "problems": problems}
        if busy:
            body["busy"] = busy
        return JSONResponse(body, status_code=503 if problems else 200)

    app.include_router(market.router)
    app.include_router(market.ws_router)
    app.include_router(regime.router)
    app.include_router(regime.ws_router)
    app.include_router(decision.router)
    app.include_router(decision.ws_router)
    app.include_router(performance.router)
    app.include_router(dashboard.router)
    # Outermost last: CORS answers preflights before the key is asked for; the gate counts only
    # WebSockets that passed the key check; identical history GETs share an answer only once
    # each has passed it.
    app.add_middleware(Coalesce)
    app.add_middleware(WebSocketGate, origins=settings.ws_origins,
                       max_clients=settings.ws_max_clients, counts=streams.ws_counts)
    app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET"], allow_headers=["X-API-Key", "Authorization"])
    return app
