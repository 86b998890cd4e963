"""``/api/decision/*`` and ``/ws/decision``: the decisions, newest first."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, WebSocket

from aetherion.api.deps import LiveDep, StoresDep, StreamsDep
from aetherion.api.market import bounded, serve_stream
from aetherion.api.params import HistoryDep, market_of
from aetherion.api.schemas import DecisionsOut
from aetherion.storage.decisions import decision_history, latest_decisions

__all__ = ["router", "ws_router"]

router = APIRouter(prefix="/api/decision", tags=["decision"])
ws_router = APIRouter()


@router.get("/latest", response_model=DecisionsOut)
async def latest(
    request: Request, st: StoresDep,
    market: Annotated[str | None, Query(description="a market id; every market when absent")]
    = None,
) -> dict[str, Any]:
    """The newest decision of each market (from the store, so it survives restarts)."""
    markets = [market_of(request, market).id] if market else None
    rows = await bounded("latest decisions", latest_decisions(st.state.engine, markets))
    return {"decisions": [d.model_dump(mode="json") for d in rows]}


@router.get("/history", response_model=DecisionsOut)
async def history(
    request: Request, st: StoresDep, h: HistoryDep,
    market: Annotated[str | None, Query(description="a market id; all when absent")] = None,
    action: Annotated[Literal["BUY", "SELL", "HOLD"] | None, Query()] = None,
) -> dict[str, Any]:
    """Stored decisions, newest first; ``since``/``until`` apply to the bar time."""
    if market is not None:
        market_of(request, market)
    rows = await bounded("decision history", decision_history(
        st.state.engine, market, h.limit, h.since, h.until, action))
    return {"decisions": [d.model_dump(mode="json") for d in rows]}


@ws_router.websocket("/ws/decision")
async def ws_decision(ws: WebSocket, rt: LiveDep, streams: StreamsDep) -> None:
    await serve_stream(ws, "decision", rt, streams)
