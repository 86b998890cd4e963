"""``/api/regime/*`` and ``/ws/regime``: regime history, model versions, live updates."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket

from aetherion.api.market import bounded, serve_stream
from aetherion.api.params import HistoryDep, MarketDep, market_of
from aetherion.api.schemas import RegimeHistoryOut
from aetherion.pipeline import Runtime

__all__ = ["router", "ws_router"]

router = APIRouter(prefix="/api/regime", tags=["regime"])
ws_router = APIRouter()


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


@router.get("/models")
async def models(
    request: Request,
    market: Annotated[str | None, Query(description="a market id; all when absent")] = None,
    timeframe: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Every model version trained (active or rejected), newest first, with its parameters,
    scaler, label map, training window and the bar from which it took effect."""
    if market is not None:
        market_of(request, market)
    rows = await bounded("models", _rt(request).state.models(market, timeframe, limit))
    return {"models": [asdict(m) for m in rows]}


@router.get("/{market}", response_model=RegimeHistoryOut)
async def regime_history(
    request: Request, m: MarketDep, h: HistoryDep,
    timeframe: Annotated[str, Query(description="'fused' or a configured timeframe")] = "fused",
) -> dict[str, Any]:
    """Stored regime rows (newest first) and the current fused regime from memory.
    ``confidence`` is the probability of the stable ``regime``, ``confidence_raw`` that of
    ``regime_raw`` (the most probable regime at that bar)."""
    rt = _rt(request)
    if timeframe != "fused" and timeframe not in rt.settings.timeframes:
        raise HTTPException(422, f"timeframe must be 'fused' or one of "
                                 f"{', '.join(rt.settings.timeframes)}")
    rows = await bounded("regime history",
                         rt.state.regime_history(m.id, timeframe, h.limit, h.since, h.until))
    snap = rt.markets[m.id].snapshot()
    current = {k: snap[k] for k in ("regime", "confidence", "regime_raw", "confidence_raw",
                                    "strategy")}
    return {"market": m.id, "timeframe": timeframe, "current": current, "regimes": rows}


@ws_router.websocket("/ws/regime")
async def ws_regime(ws: WebSocket) -> None:
    await serve_stream(ws, "regime")
