"""``/api/regime/*`` and ``/ws/regime``: regime history, model versions, live updates."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket

from aetherion.api.deps import LiveDep, StoresDep, StreamsDep
from aetherion.api.market import bounded, serve_stream
from aetherion.api.params import HistoryDep, MarketDep, market_of
from aetherion.api.schemas import RegimeHistoryOut

__all__ = ["router", "ws_router"]

router = APIRouter(prefix="/api/regime", tags=["regime"])
ws_router = APIRouter()


@router.get("/models")
async def models(
    request: Request, st: StoresDep,
    market: Annotated[str | None, Query(description="a market id; all when absent")] = None,
    timeframe: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Every model version trained (active or rejected), newest first, with its parameters,
    scaler, label map, training window and the bar from which it took effect."""
    if market is not None:
        market_of(request, market)
    rows = await bounded("models", st.state.models(market, timeframe, limit))
    return {"models": [asdict(m) for m in rows]}


@router.get("/transitions/{market}")
async def transitions(st: StoresDep, m: MarketDep, h: HistoryDep) -> dict[str, Any]:
    """Stored regime transitions (every timeframe and the fused one), newest first: from and to
    regime and strategy, the confidence and the cause in words; ``since``/``until`` apply to the
    open time of the bar where the change was accepted."""
    rows = await bounded("transitions", st.state.transitions(m.id, h.limit, h.since, h.until))
    return {"market": m.id, "transitions": [{k: v for k, v in r.items() if k != "id"}
                                            for r in rows]}


@router.get("/{market}", response_model=RegimeHistoryOut)
async def regime_history(
    rt: LiveDep, st: StoresDep, m: MarketDep, h: HistoryDep,
    timeframe: Annotated[str, Query(description="'fused' or a configured timeframe")] = "fused",
) -> dict[str, Any]:
    """Stored regime rows (newest first) and the current fused regime from memory.
    ``confidence`` is the probability of the stable ``regime``, ``confidence_raw`` that of
    ``regime_raw`` (the most probable regime at that bar)."""
    if timeframe != "fused" and timeframe not in rt.settings.timeframes:
        raise HTTPException(422, f"timeframe must be 'fused' or one of "
                                 f"{', '.join(rt.settings.timeframes)}")
    rows = await bounded("regime history",
                         st.state.regime_history(m.id, timeframe, h.limit, h.since, h.until))
    fused = rt.view(m.id).fused
    current = {"regime": fused.regime if fused else "unknown",
               "confidence": fused.confidence if fused else 0.0,
               "regime_raw": fused.regime_raw if fused else "unknown",
               "confidence_raw": fused.confidence_raw if fused else 0.0,
               "strategy": fused.strategy if fused else None}
    return {"market": m.id, "timeframe": timeframe, "current": current, "regimes": rows}


@ws_router.websocket("/ws/regime")
async def ws_regime(ws: WebSocket, rt: LiveDep, streams: StreamsDep) -> None:
    await serve_stream(ws, "regime", rt, streams)
