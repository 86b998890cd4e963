"""Shared request parameters: the market path segment and history windows."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from aetherion.config import MarketConfig
from aetherion.domain import TIMEFRAME_MS, parse_time

__all__ = [
    "History", "HistoryDep", "MarketDep", "UnknownMarket", "history", "market_of", "timeframe_of",
]


class UnknownMarket(Exception):
    """A market id that is not configured; answered 404 with the known ids."""

    def __init__(self, market: str, known: list[str]) -> None:
        super().__init__(market)
        self.market = market
        self.known = known


def market_of(request: Request, market: str) -> MarketConfig:
    settings = request.app.state.settings
    cfg: MarketConfig | None = settings.market(market)
    if cfg is None:
        raise UnknownMarket(market, [m.id for m in settings.markets])
    return cfg


async def market_dep(request: Request, market: str) -> MarketConfig:
    return market_of(request, market)


class History:
    """``limit``, ``since`` and ``until`` of a history endpoint (newest first)."""

    def __init__(self, limit: int, since: int | None, until: int | None) -> None:
        if since is not None and until is not None and since > until:
            raise HTTPException(422, "since must not be after until")
        self.limit, self.since, self.until = limit, since, until


async def history(
    limit: Annotated[int, Query(ge=1, le=5000, description="rows, newest first")] = 100,
    since: Annotated[str | None, Query(description="epoch ms or ISO-8601, inclusive")] = None,
    until: Annotated[str | None, Query(description="epoch ms or ISO-8601, inclusive")] = None,
) -> History:
    try:
        return History(limit, parse_time("since", since), parse_time("until", until))
    except ValueError as e:  # the parser says what is wrong in one line
        raise HTTPException(422, str(e)) from None


def timeframe_of(request: Request, timeframe: str | None) -> str:
    tfs: tuple[str, ...] = request.app.state.settings.timeframes
    if timeframe is None:
        return tfs[0]
    if timeframe not in tfs:
        known = ", ".join(tfs)
        why = "is not configured" if timeframe in TIMEFRAME_MS else "is not a timeframe"
        raise HTTPException(422, f"timeframe {timeframe!r} {why}; configured: {known}")
    return timeframe


# Coroutines, not functions: FastAPI would run a function dependency in a worker thread.
MarketDep = Annotated[MarketConfig, Depends(market_dep)]
HistoryDep = Annotated[History, Depends(history)]
