"""Shared request parameters: the market path segment and history windows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from aetherion.config import MarketConfig
from aetherion.domain import TIMEFRAME_MS

__all__ = [
    "History", "HistoryDep", "MarketDep", "UnknownMarket", "history", "market_of", "parse_time",
    "timeframe_of",
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


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _cut(value: str, width: int = 80) -> str:
    """``value`` quoted, cut to about ``width`` characters (an error never echoes a huge one)."""
    return repr(value if len(value) <= width else value[:width] + "…")


def parse_time(name: str, value: str | None) -> int | None:
    """Epoch milliseconds from ``value``: an integer, or ISO-8601 (naive means UTC)."""
    if value is None or value == "":
        return None
    v = value.strip()
    digits = v.removeprefix("-")
    if digits.isascii() and digits.isdigit():  # '²' is a digit to isdigit(), not to int()
        if len(digits.lstrip("0")) > 19 or not INT64_MIN <= int(v) <= INT64_MAX:  # a 64-bit column
            raise HTTPException(422, f"{name}: {_cut(value)} is beyond 64-bit epoch "
                                     "milliseconds")
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{name}: {_cut(value)} is neither epoch milliseconds nor an ISO-8601 time"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


class History:
    """``limit``, ``since`` and ``until`` of a history endpoint (newest first)."""

    def __init__(self, limit: int, since: int | None, until: int | None) -> None:
        if since is not None and until is not None and since > until:
            raise HTTPException(422, "since must not be after until")
        self.limit, self.since, self.until = limit, since, until


def history(
    limit: Annotated[int, Query(ge=1, le=5000, description="rows, newest first")] = 100,
    since: Annotated[str | None, Query(description="epoch ms or ISO-8601, inclusive")] = None,
    until: Annotated[str | None, Query(description="epoch ms or ISO-8601, inclusive")] = None,
) -> History:
    return History(limit, parse_time("since", since), parse_time("until", until))


def timeframe_of(request: Request, timeframe: str | None) -> str:
    tfs: tuple[str, ...] = request.app.state.settings.timeframes
    if timeframe is None:
        return tfs[0]
    if timeframe not in tfs:
        known = ", ".join(tfs)
        why = "is not configured" if timeframe in TIMEFRAME_MS else "is not a timeframe"
        raise HTTPException(422, f"timeframe {timeframe!r} {why}; configured: {known}")
    return timeframe


MarketDep = Annotated[MarketConfig, Depends(market_of)]
HistoryDep = Annotated[History, Depends(history)]
