"""The aggressor side of a trade when the venue does not publish it (Alpaca, Kite)."""

from __future__ import annotations

from aetherion.domain import BUY, SELL, UNKNOWN_SIDE

__all__ = ["SideInference"]


class SideInference:
    """The quote rule, falling back to the tick rule.

    A trade at or above the ask is a buy, at or below the bid a sell. Inside the spread (or
    before any usable quote) the tick rule decides: above the previous trade price a buy, below
    it a sell, at the same price the previous trade's side. Unknown before the first decision.
    """

    __slots__ = ("ask", "bid", "last_price", "last_side")

    def __init__(self) -> None:
        self.bid = 0.0
        self.ask = 0.0
        self.last_price = 0.0
        self.last_side = UNKNOWN_SIDE

    def quote(self, bid: float, ask: float) -> None:
        """The current best bid and ask; a crossed or empty side is not used."""
        ok = bid > 0 and ask > 0 and bid <= ask
        self.bid, self.ask = (bid, ask) if ok else (0.0, 0.0)

    def side(self, price: float) -> int:
        if self.ask and price >= self.ask:
            side = BUY
        elif self.bid and price <= self.bid:
            side = SELL
        elif self.last_price and price != self.last_price:
            side = BUY if price > self.last_price else SELL
        else:
            side = self.last_side
        self.last_price, self.last_side = price, side
        return side
