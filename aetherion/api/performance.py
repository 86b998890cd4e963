"""``/api/decision/performance/{market}``: what this run's decisions earned, against holding.

The deciding timeframe is that of the market's newest decision. Its bars since the run started
(the newest ``MAX_BARS``) and the decisions stored for them go through
:func:`aetherion.report.performance`, so the fills and costs are the replay report's: each
decision's exposure is filled at the next bar's open, costs per unit of exposure traded. A bar
without a decision keeps the exposure before it (before the run's first decision: the one held
when it started).

``position`` is that book now: ``held`` is the exposure filled at the last bar's open,
``decided`` the one decided on its close (filled at the next open). The entry is the fill that
opened the held side (its bar's open time and price); ``open_return`` is the held position's
return since then, compounded bar by bar and marked at the last close, before costs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from aetherion.api.deps import LiveDep, StoresDep
from aetherion.api.market import bounded
from aetherion.api.params import MarketDep
from aetherion.report import DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS, performance
from aetherion.storage.decisions import decision_history, latest_decisions
from aetherion.storage.stores import Stores

__all__ = ["MAX_BARS", "PerformanceOut", "router"]

# ~83 min of 1 s bars, ~3.5 days of 1 m bars. A request reads up to this many decisions (under
# 0.1 s of the event loop): the dashboard asks after a decision, at most every 5 s.
MAX_BARS = 5_000

router = APIRouter(prefix="/api/decision", tags=["decision"])


class PositionOut(BaseModel):
    side: Literal["long", "flat", "short"] = Field(description="of the held exposure")
    held: float = Field(description="exposure filled at the last bar's open, -1..1")
    decided: float = Field(description="exposure decided on the last close (next open's fill)")
    entry_time: int | None = Field(description="open time of the bar whose open filled the entry")
    entry_price: float | None
    open_return: float | None = Field(
        description="since the entry, marked at the last close, before costs")


class PerformanceOut(BaseModel):
    market: str
    timeframe: str | None = Field(description="the deciding timeframe; null before a decision")
    since: int = Field(description="start of the run (epoch ms)")
    bars: int
    first_bar: int | None
    last_bar: int | None
    last_close: float | None
    position: PositionOut
    performance: dict[str, Any] = Field(
        description="aetherion.report.performance: books decisions, buy_and_hold, ma_filter")


def _position(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The held exposure, its entry and open return (see the module doc)."""
    n = len(rows)
    exp = np.array([r["exposure"] for r in rows], dtype=float)
    held = float(exp[-2]) if n >= 2 else 0.0
    side = "long" if held > 0 else "short" if held < 0 else "flat"
    out: dict[str, Any] = {"side": side, "held": held, "decided": float(exp[-1]) if n else 0.0,
                           "entry_time": None, "entry_price": None, "open_return": None}
    if side == "flat":
        return out
    j = n - 2  # back to the first decision of this side: it was filled at the next open
    while j > 0 and np.sign(exp[j - 1]) == np.sign(held):
        j -= 1
    opens = np.array([r["open"] for r in rows[j + 1:]], dtype=float)
    marks = np.append(opens, rows[-1]["close"])  # opens from the entry on, then the last close
    growth = np.prod(1.0 + exp[j:n - 1] * (marks[1:] / marks[:-1] - 1.0))
    return out | {"entry_time": rows[j + 1]["open_time"], "entry_price": rows[j + 1]["open"],
                  "open_return": float(growth - 1.0)}


async def _rows(st: Stores, market: str, since: int) -> tuple[str | None, list[dict[str, Any]]]:
    """The deciding timeframe and its bars since ``since``, each with the exposure held after
    its close (report rows, oldest first)."""
    engine = st.state.engine
    newest = await bounded("performance decisions", latest_decisions(engine, [market]))
    if not newest:
        return None, []
    tf = newest[0].timeframe
    bars = await bounded("performance bars", st.market.bars(market, tf, MAX_BARS, since))
    bars = [b for b in reversed(bars) if b.closed]
    if not bars:
        return tf, []
    first = bars[0].open_time
    before = await bounded("performance decisions",
                           decision_history(engine, market, 1, None, first - 1))
    decided = await bounded("performance decisions",
                            decision_history(engine, market, MAX_BARS, first))
    exposure = {d.bar_time: d.exposure for d in decided if d.timeframe == tf}
    current = before[0].exposure if before else 0.0
    rows = []
    for b in bars:
        current = exposure.get(b.open_time, current)
        rows.append({"open_time": b.open_time, "open": b.open, "close": b.close,
                     "exposure": current})
    return tf, rows




@router.get("/performance/{market}", response_model=PerformanceOut)
async def decision_performance(
    rt: LiveDep, st: StoresDep, m: MarketDep,
    fee_bps: Annotated[float, Query(ge=0, le=1000)] = DEFAULT_FEE_BPS,
    slippage_bps: Annotated[float, Query(ge=0, le=1000)] = DEFAULT_SLIPPAGE_BPS,
) -> dict[str, Any]:
    """The run's decisions against buy-and-hold on the deciding timeframe, with the replay
    report's fills and costs, and the position they hold now (entry, open return)."""
    since = rt.started_ms
    tf, rows = await _rows(st, m.id, since)
    return {"market": m.id, "timeframe": tf, "since": since, "bars": len(rows),
            "first_bar": rows[0]["open_time"] if rows else None,
            "last_bar": rows[-1]["open_time"] if rows else None,
            "last_close": rows[-1]["close"] if rows else None,
            "position": _position(rows),
            "performance": performance(rows, fee_bps, slippage_bps)}
