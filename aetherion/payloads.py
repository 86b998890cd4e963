"""Domain events as the JSON objects of the REST API, the WebSocket streams and the cluster's bus
(DESIGN shapes): one shape wherever an event leaves the process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from aetherion.domain import (
    BUY,
    SELL,
    UNKNOWN_SIDE,
    Bar,
    BookSnapshot,
    Features,
    RegimeUpdate,
    Tick,
    Transition,
    side_name,
)

__all__ = [
    "bar_json", "bar_of", "book_json", "book_of", "encode", "features_json", "regime_json",
    "regime_of", "tick_json", "tick_of", "transition_json",
]


#: a JSON object as it goes out
JsonDict = dict[str, object]
#: a decoded JSON object coming back (its values are whatever the JSON held)
Decoded = Mapping[str, Any]


def tick_json(t: Tick) -> JsonDict:
    return {
        "ts": t.ts, "price": t.price, "size": t.size, "side": side_name(t.side),
        "trade_id": t.trade_id, "side_inferred": t.side_inferred,
    }


def bar_json(b: Bar) -> JsonDict:
    return {
        "market": b.market, "timeframe": b.timeframe, "open_time": b.open_time,
        "close_time": b.close_time, "open": b.open, "high": b.high, "low": b.low,
        "close": b.close, "volume": b.volume,
        "buy_volume": b.buy_volume if b.sided else None,
        "sell_volume": b.sell_volume if b.sided else None,
        "trade_count": b.trade_count, "closed": b.closed, "revision": b.revision,
    }


def book_json(b: BookSnapshot, depth: int | None = None) -> JsonDict:
    return {
        "market": b.market, "ts": b.ts, "sequence": b.sequence, "state": b.state,
        "bids": [list(lv) for lv in b.bids[:depth]],
        "asks": [list(lv) for lv in b.asks[:depth]],
    }


def features_json(f: Features) -> JsonDict:
    return {
        "market": f.market, "timeframe": f.timeframe, "open_time": f.open_time,
        "close": f.close, "log_return": f.log_return, "true_range": f.true_range,
        "atr": f.atr, "volatility": f.volatility, "volatility_ann": f.volatility_ann,
        "volume_delta": f.volume_delta, "cum_volume_delta": f.cum_volume_delta,
        "norm_volume_delta": f.norm_volume_delta, **f.extra,
    }


def regime_json(u: RegimeUpdate) -> JsonDict:
    return {
        "market": u.market, "timeframe": u.timeframe, "open_time": u.open_time,
        "regime_raw": u.regime_raw, "regime": u.regime, "confidence": u.confidence,
        "confidence_raw": u.confidence_raw, "probs": u.probs,
        "model_version": u.model_version, "strategy": u.strategy,
        "contributions": u.contributions,
    }


def transition_json(t: Transition) -> JsonDict:
    return {
        "market": t.market, "timeframe": t.timeframe, "open_time": t.open_time,
        "from_regime": t.from_regime, "to_regime": t.to_regime, "confidence": t.confidence,
        "from_strategy": t.from_strategy, "to_strategy": t.to_strategy, "cause": t.cause,
    }


def encode(kind: str, market: str, payload: Mapping[str, object]) -> str:
    """One stream message: ``{"type": kind, "market": market, **payload}`` as JSON text."""
    return orjson.dumps({"type": kind, "market": market, **payload}).decode()


# ---- back from JSON (the cluster's mirrors of markets owned elsewhere) ------------------------

def tick_of(m: Decoded) -> Tick:
    side = {"buy": BUY, "sell": SELL}.get(m.get("side") or "", UNKNOWN_SIDE)
    return Tick(m["market"], int(m["ts"]), float(m["price"]), float(m["size"]), side,
                m.get("trade_id"), side_inferred=bool(m.get("side_inferred")))


def bar_of(m: Decoded) -> Bar:
    sided = m.get("buy_volume") is not None
    return Bar(m["market"], m["timeframe"], int(m["open_time"]), m["open"], m["high"], m["low"],
               m["close"], m["volume"], m.get("buy_volume") or 0.0, m.get("sell_volume") or 0.0,
               int(m["trade_count"]), bool(m["closed"]), int(m.get("revision") or 0),
               sided=sided)


def book_of(m: Decoded) -> BookSnapshot:
    return BookSnapshot(m["market"], int(m["ts"]), tuple((p, q) for p, q in m["bids"]),
                        tuple((p, q) for p, q in m["asks"]), m.get("sequence"),
                        m.get("state", "live"))


def regime_of(m: Decoded) -> RegimeUpdate:
    return RegimeUpdate(m["market"], m["timeframe"], int(m["open_time"]), m["regime_raw"],
                        m["regime"], m["confidence"], m["confidence_raw"], m["probs"],
                        m.get("model_version"), m.get("strategy"), m.get("contributions"))
