"""The API's side of the pipeline's events: the WebSocket hubs, as the runtime's publisher.

:class:`Streams` holds the three hubs and turns each event into the stream message its clients
get (``docs``: DESIGN, WebSocket). The lifespan hands it to the
:class:`~aetherion.pipeline.Runtime`, which treats it as one more sink. Nothing is encoded for a
stream without clients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aetherion.api.hub import Hub
from aetherion.config import MarketConfig
from aetherion.decision.model import Decision
from aetherion.domain import Bar, BookSnapshot, Features, RegimeUpdate, Tick, Transition
from aetherion.payloads import (
    bar_json,
    book_json,
    encode,
    features_json,
    regime_json,
    tick_json,
    transition_json,
)
from aetherion.pipeline import MarketView, NullSink

__all__ = ["BOOK_LEVELS", "Streams", "snapshot_json"]

BOOK_LEVELS = 20  # levels a side in a `book` message
TICKS_PER_MESSAGE = 500  # a `ticks` message stays well under a client's usual 1 MiB limit
#: the stream each event kind goes out on
STREAM_OF = {"tick": "market", "ticks": "market", "bar": "market", "features": "market",
             "book": "market", "regime": "regime", "transition": "regime",
             "decision": "decision"}


def snapshot_json(v: MarketView) -> dict[str, Any]:
    """Last price, best bid/ask, the latest bar per timeframe (open if one is building), and
    the fused regime with its confidence and the active strategy."""
    book, tick, fused = v.book, v.last_tick, v.fused
    return {
        "market": v.market.id, "venue": v.market.venue,
        "ts": tick.ts if tick else None, "price": tick.price if tick else None,
        "bid": book.bids[0][0] if book and book.bids else None,
        "ask": book.asks[0][0] if book and book.asks else None,
        "bars": {tf: bar_json(b) if b else None for tf, b in v.bars.items()},
        "regime": fused.regime if fused else "unknown",
        "confidence": fused.confidence if fused else 0.0,
        "regime_raw": fused.regime_raw if fused else "unknown",
        "confidence_raw": fused.confidence_raw if fused else 0.0,
        "strategy": fused.strategy if fused else None,
    }


class Streams(NullSink):
    def __init__(self) -> None:
        self.hubs = {name: Hub(name) for name in ("market", "regime", "decision")}
        self.ws_counts = {"open": 0, "origin": 0, "limit": 0}  # the WebSocket gate's

    def stats(self) -> dict[str, Any]:
        return {
            "ws_refused": {k: v for k, v in self.ws_counts.items() if k != "open"},
            "hubs": {name: {"clients": h.client_count, "messages": h.messages,
                            "dropped": h.dropped_clients} for name, h in self.hubs.items()},
        }

    def wanted(self) -> frozenset[str] | None:
        """The markets the clients of any stream follow (``None``: every market)."""
        out: set[str] = set()
        for hub in self.hubs.values():
            w = hub.wanted()
            if w is None:
                return None
            out |= w
        return frozenset(out)

    def relay(self, kind: str, market: str, text: str) -> None:
        """An event already encoded (from the cluster's bus) to the clients of its stream."""
        stream = STREAM_OF.get(kind)
        if stream is not None and self.hubs[stream].client_count:
            self.hubs[stream].publish(market, text)

    def _send(self, stream: str, kind: str, market: MarketConfig, payload: dict[str, Any]) -> None:
        self.hubs[stream].publish(market.id, encode(kind, market.id, payload))

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        if not self.hubs["market"].client_count:
            return
        # A batch goes out as one message: a send per client costs tens of microseconds, so a
        # message per trade to every client would not keep up with a busy market.
        if len(ticks) == 1:
            self._send("market", "tick", market, tick_json(ticks[0]))
            return
        for i in range(0, len(ticks), TICKS_PER_MESSAGE):
            chunk = [tick_json(t) for t in ticks[i:i + TICKS_PER_MESSAGE]]
            self._send("market", "ticks", market, {"ticks": chunk})

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        if self.hubs["market"].client_count:
            self._send("market", "bar", market, bar_json(bar))

    def features(self, market: MarketConfig, f: Features) -> None:
        if self.hubs["market"].client_count:
            self._send("market", "features", market, features_json(f))

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        if self.hubs["market"].client_count:  # connectors send at most a few books a second
            self._send("market", "book", market, book_json(book, BOOK_LEVELS))

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        if self.hubs["regime"].client_count:
            self._send("regime", "regime", market, regime_json(u))

    def transition(self, market: MarketConfig, t: Transition) -> None:
        if self.hubs["regime"].client_count:
            self._send("regime", "transition", market, transition_json(t))

    def decision(self, market: MarketConfig, d: Decision) -> None:
        if self.hubs["decision"].client_count:
            self._send("decision", "decision", market, d.model_dump(mode="json"))
