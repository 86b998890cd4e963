"""The API's response types (they document ``/docs``; the shapes are DESIGN's)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from aetherion.decision.model import Decision

__all__ = [
    "BarOut", "CandlesOut", "DecisionsOut", "FeaturesOut", "FeaturesRowOut", "LatencyOut",
    "MarketStatusOut", "OrderbookOut", "RegimeCurrentOut", "RegimeHistoryOut", "RegimeRowOut",
    "SnapshotOut", "StatusOut", "TradeOut", "TradesOut",
]


class BarOut(BaseModel):
    market: str
    timeframe: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    buy_volume: float | None
    sell_volume: float | None
    trade_count: int
    closed: bool
    revision: int


class CandlesOut(BaseModel):
    market: str
    timeframe: str
    candles: list[BarOut]


class TradeOut(BaseModel):
    ts: int
    price: float
    size: float
    side: str
    trade_id: str | None
    side_inferred: bool = False


class TradesOut(BaseModel):
    market: str
    trades: list[TradeOut]


class OrderbookOut(BaseModel):
    market: str
    ts: int
    sequence: int | None
    state: str
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


class FeaturesRowOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # regime inputs ride along by name

    market: str
    timeframe: str
    open_time: int
    close: float
    log_return: float | None
    true_range: float | None
    atr: float | None
    volatility: float | None
    volatility_ann: float | None
    volume_delta: float | None
    cum_volume_delta: float | None
    norm_volume_delta: float | None


class FeaturesOut(BaseModel):
    market: str
    timeframe: str
    features: list[FeaturesRowOut]


class SnapshotOut(BaseModel):
    market: str
    venue: str
    ts: int | None
    price: float | None
    bid: float | None
    ask: float | None
    bars: dict[str, BarOut | None]
    regime: str
    confidence: float | None
    regime_raw: str
    confidence_raw: float | None
    strategy: str | None


class RegimeRowOut(BaseModel):
    """A stored ``regime_state`` row. ``confidence`` is the probability of ``regime`` (the
    stable one), ``confidence_raw`` that of ``regime_raw`` (null in rows stored before it)."""

    model_config = ConfigDict(extra="allow")

    market: str
    timeframe: str
    open_time: int
    regime_raw: str
    regime: str
    confidence: float | None
    confidence_raw: float | None
    probs: dict[str, float | None]
    model_version: int | None
    strategy: str | None
    contributions: dict[str, dict[str, float | None]] | None


class RegimeCurrentOut(BaseModel):
    regime: str
    confidence: float | None
    regime_raw: str
    confidence_raw: float | None
    strategy: str | None


class RegimeHistoryOut(BaseModel):
    market: str
    timeframe: str
    current: RegimeCurrentOut
    regimes: list[RegimeRowOut]


class DecisionsOut(BaseModel):
    decisions: list[Decision]


class LatencyOut(BaseModel):
    p50: float | None
    p99: float | None
    max: float | None


class MarketStatusOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    venue: str
    connector: str
    symbol: str
    state: str
    msg_rate: float
    last_message_age_s: float | None
    reconnects: int = Field(description="reconnect attempts, counted from the first failure")
    last_error: str | None = Field(
        None, description="the connector's last failure (DNS, refused, HTTP status, the "
        "venue's error code), short and without credentials; null when none")
    last_error_at: int | None = Field(None, description="when it happened, epoch ms")
    gaps_detected: int
    gaps_filled: int
    latency_ms: dict[str, LatencyOut]
    owner: str | None = Field(None, description=(
        "cluster mode: the instance running this market (null in one process, or while no "
        "instance holds it)"))
    lease_age_s: float | None = Field(None, description="cluster mode: age of the owner's lease")


class StatusOut(BaseModel):
    markets: list[MarketStatusOut]
    stores: dict[str, object]
