"""``/api/market/*`` and ``/ws/market``: latest values from memory, history from the store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket

from aetherion.api.deps import LiveDep, LiveView, StoresDep, StreamsDep
from aetherion.api.params import HistoryDep, MarketDep, UnknownMarket, timeframe_of
from aetherion.api.publish import Streams, snapshot_json
from aetherion.api.schemas import (
    CandlesOut,
    FeaturesOut,
    OrderbookOut,
    SnapshotOut,
    StatusOut,
    TradesOut,
)
from aetherion.ingest.sessions import next_open_ms, session_open
from aetherion.payloads import bar_json, book_json, encode, features_json, tick_json

__all__ = ["QUERY_TIMEOUT_S", "bounded", "router", "ws_router"]

T = TypeVar("T")

# A history query (waiting for a pooled connection included) that takes longer is abandoned and
# answered 503 with Retry-After, instead of holding the client; rows are bounded by ``limit``
# (at most 5,000, see ``aetherion.api.params.history``).
QUERY_TIMEOUT_S = 5.0

router = APIRouter(prefix="/api/market", tags=["market"])
ws_router = APIRouter()

TimeframeQ = Annotated[str | None, Query(description="one of the configured timeframes")]


async def bounded(what: str, query: Awaitable[T]) -> T:
    """``query``'s result, or 503 when it takes longer than ``QUERY_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_S):
            return await query
    except TimeoutError:
        raise HTTPException(
            503, f"{what}: the store did not answer within {QUERY_TIMEOUT_S:g} s (busy); retry",
            headers={"Retry-After": "1"}) from None


@router.get("/status", response_model=StatusOut)
async def status(rt: LiveDep) -> dict[str, Any]:
    markets = []
    now = time.time_ns() // 1_000_000
    owners = rt.ownership()
    for m in rt.settings.markets:
        try:
            stats = rt.view(m.id).status
        except KeyError:  # not started yet
            stats = {}
        if m.connector == "simulator":
            session: dict[str, Any] = {"session": "simulated"}  # trades around the clock
        elif session_open(m.venue, now):
            session = {"session": "open"}
        else:
            session = {"session": "closed", "next_open_ms": next_open_ms(m.venue, now)}
        markets.append({"id": m.id, "venue": m.venue, "connector": m.connector,
                        "symbol": m.symbol, **session, **stats, **owners[m.id]})
    return {"markets": markets, "stores": rt.store_status()}


@router.get("/snapshot/{market}", response_model=SnapshotOut)
async def snapshot(rt: LiveDep, m: MarketDep) -> dict[str, Any]:
    return snapshot_json(rt.view(m.id))


@router.get("/trades/{market}", response_model=TradesOut)
async def trades(st: StoresDep, m: MarketDep, h: HistoryDep) -> dict[str, Any]:
    rows = await bounded("trades", st.market.ticks(m.id, h.limit, h.since, h.until))
    return {"market": m.id, "trades": [tick_json(t) for t in rows]}


@router.get("/orderbook/{market}", response_model=OrderbookOut)
async def orderbook(
    rt: LiveDep, st: StoresDep, m: MarketDep,
    depth: Annotated[int, Query(ge=1, le=1000, description="levels a side")] = 20,
) -> dict[str, Any]:
    book = rt.view(m.id).book or await bounded("orderbook",
                                               st.market.latest_book(m.venue, m.id))
    if book is None:
        raise HTTPException(503, f"no order book received yet for {m.id}")
    return book_json(book, depth)


@router.get("/candles/{market}", response_model=CandlesOut)
async def candles(
    request: Request, st: StoresDep, m: MarketDep, h: HistoryDep, timeframe: TimeframeQ = None
) -> dict[str, Any]:
    tf = timeframe_of(request, timeframe)
    rows = await bounded("candles", st.market.bars(m.id, tf, h.limit, h.since, h.until))
    return {"market": m.id, "timeframe": tf, "candles": [bar_json(b) for b in rows]}


@router.get("/features/{market}", response_model=FeaturesOut)
async def features(
    request: Request, st: StoresDep, m: MarketDep, h: HistoryDep, timeframe: TimeframeQ = None
) -> dict[str, Any]:
    tf = timeframe_of(request, timeframe)
    rows = await bounded("features", st.market.features(m.id, tf, h.limit, h.since, h.until))
    return {"market": m.id, "timeframe": tf, "features": [features_json(f) for f in rows]}


def parse_markets(ws: WebSocket, known: list[str]) -> frozenset[str] | None:
    raw = ws.query_params.get("markets")
    if not raw:
        return None
    wanted = frozenset(x.strip() for x in raw.split(",") if x.strip())
    unknown = sorted(wanted - set(known))
    if unknown:
        raise UnknownMarket(",".join(unknown), known)
    return wanted


async def serve_stream(ws: WebSocket, stream: str, rt: LiveView, streams: Streams) -> None:
    """Accept a client of ``stream``: snapshot per followed market first, then live messages."""
    known = [m.id for m in rt.settings.markets]
    try:
        markets = parse_markets(ws, known)
    except UnknownMarket as e:
        await ws.accept()
        await ws.send_json({"type": "error", "market": None,
                            "error": f"unknown market(s) {e.market}", "known_markets": known})
        await ws.close(1008, "unknown market")
        return
    await ws.accept()

    def first(wanted: frozenset[str] | None) -> list[str]:
        return [encode("snapshot", mid, snapshot_json(rt.view(mid)))
                for mid in known if wanted is None or mid in wanted]

    await streams.hubs[stream].serve(ws, markets, first)


@ws_router.websocket("/ws/market")
async def ws_market(ws: WebSocket, rt: LiveDep, streams: StreamsDep) -> None:
    await serve_stream(ws, "market", rt, streams)
