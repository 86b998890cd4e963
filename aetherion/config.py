"""Settings (environment ``AETHERION_<NAME>`` or ``.env``) and market definitions."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aetherion.domain import TIMEFRAME_MS

__all__ = ["DEFAULT_MARKETS", "MarketConfig", "Settings", "settings_error_line"]

_MARKET_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
CONNECTORS = ("simulator", "binance", "ccxt", "alpaca", "kite")


class MarketConfig(BaseModel):
    """One named instrument stream. Credentials only by the names of the env vars holding them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    venue: Literal["crypto", "us", "nse"]
    connector: Literal["simulator", "binance", "ccxt", "alpaca", "kite"]
    symbol: str = Field(min_length=1)
    ws_url: str | None = None
    rest_url: str | None = None
    exchange: str | None = None  # ccxt exchange id, for connector "ccxt"
    feed: str | None = None  # alpaca: "iex" or "sip"
    instrument_token: int | None = None  # kite
    api_key_env: str | None = None
    api_secret_env: str | None = None
    access_token_env: str | None = None
    # simulator: starting price and a per-market seed offset
    start_price: float | None = Field(default=None, gt=0)

    @field_validator("id")
    @classmethod
    def _id_is_url_safe(cls, v: str) -> str:
        if not _MARKET_ID.match(v):
            raise ValueError("must be 1-32 chars of lower-case letters, digits, '-' or '_'")
        return v

    @model_validator(mode="after")
    def _connector_options(self) -> MarketConfig:
        if self.connector == "ccxt" and not self.exchange:
            raise ValueError(f"market {self.id!r}: connector 'ccxt' needs 'exchange' (a ccxt id)")
        return self


DAY_MS = 86_400_000

DEFAULT_MARKETS: tuple[MarketConfig, ...] = (
    MarketConfig(id="btcusdt", venue="crypto", connector="simulator", symbol="BTC/USDT",
                 start_price=60_000.0),
    MarketConfig(id="spy", venue="us", connector="simulator", symbol="SPY", start_price=450.0),
    MarketConfig(id="nifty", venue="nse", connector="simulator", symbol="NIFTY 50",
                 start_price=22_000.0),
)


class Settings(BaseSettings):
    """Every setting of the process. A bad value fails at start, naming the setting."""

    model_config = SettingsConfigDict(
        env_prefix="AETHERION_", env_file=".env", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    sql_url: str = "sqlite+aiosqlite:///./var/aetherion.db"
    mongo_url: str | None = None
    mongo_db: str = "aetherion"
    markets: Annotated[tuple[MarketConfig, ...], NoDecode] = DEFAULT_MARKETS
    timeframes: Annotated[tuple[str, ...], NoDecode] = ("1m", "5m", "15m", "1h")
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    api_key: str | None = None

    # simulator
    sim_rate: float = Field(default=50.0, gt=0, le=100_000, description="trades/s per market")
    sim_seed: int = 7
    sim_regime_seconds: float = Field(default=1800.0, gt=0, description="mean calm-regime stay")

    # candle engine
    history_bars: int = Field(
        default=600, ge=0, le=100_000,
        description="closed bars per timeframe fetched from the venue at start to warm up")
    bar_grace_ms: int = Field(default=500, ge=0, le=60_000)

    # regime model (docs/regime.md)
    regime_window: int = Field(default=2000, ge=100, le=20_000,
                               description="bars EM is fitted on (the newest)")
    regime_memory: int = Field(default=20_000, ge=100, le=200_000,
                               description="bars kept per timeframe for the long-run scale")
    regime_min_bars: int = Field(default=200, ge=50, le=20_000,
                                 description="valid bars before the first model")
    regime_retrain_bars: int = Field(default=250, ge=1, description="bars between retrains")
    regime_stay_bars: float = Field(default=200.0, ge=2.0, le=1e6,
                                    description="expected stay in a regime, bars")
    regime_stay_weight: float = Field(
        default=0.3, ge=0.0, le=100.0,
        description="weight of the expected stay against the data's own, x the window; 0: fixed")
    regime_crisis_ratio: float = Field(
        default=2.0, gt=1.0, le=100.0,
        description="crisis: volatility at least this many times the long-run typical level")
    regime_restarts: int = Field(default=1, ge=1, le=50)
    regime_n_iter: int = Field(default=100, ge=5, le=10_000)
    regime_seed: int = 7
    regime_threshold: float = Field(default=0.6, gt=0.0, le=1.0)
    regime_k: int = Field(default=3, ge=1, le=1000)
    regime_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict, description="timeframe:weight,...; unset: 1, 2, 3... by rank")

    # decision policy (docs/decision.md)
    decision_min_confidence: float = Field(default=0.6, ge=0.0, le=1.0,
                                           description="fused confidence needed to open")
    decision_cooldown_bars: int = Field(default=5, ge=0, le=100_000,
                                        description="bars after a BUY/SELL before a new entry")
    decision_timeframe: str | None = Field(default=None,
                                           description="deciding timeframe; unset: the finest")
    decision_allow_short: bool = False
    decision_rules: Literal["hold", "signals"] = Field(
        default="hold", description="hold: strategies hold their direction; signals: ATR rules")
    decision_size_by_volatility: bool = True
    decision_vol_bars: int = Field(default=20, ge=2, le=10_000)
    decision_vol_halflife_bars: int = Field(default=500, ge=1, le=1_000_000)
    decision_size_step: float = Field(default=0.25, gt=0.0, le=1.0)
    decision_min_change: float = Field(default=0.5, ge=0.0, le=2.0)
    decision_momentum_bars: int = Field(default=20, ge=1, le=10_000)
    decision_trend_entry_atr: float = Field(default=1.5, gt=0.0, le=1000.0)
    decision_trend_exit_atr: float = Field(default=0.0, ge=-1000.0, le=1000.0)
    decision_mean_bars: int = Field(default=20, ge=2, le=10_000)
    decision_mr_entry_atr: float = Field(default=1.5, gt=0.0, le=1000.0)
    decision_mr_exit_atr: float = Field(default=0.25, ge=0.0, le=1000.0)

    # access from browsers and WebSocket clients
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="origins allowed cross-origin REST (comma list, * for any)")
    ws_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="WebSocket origins besides the page's own (comma list, * any)")
    ws_max_clients: int = Field(default=500, ge=1, le=100_000,
                                description="open WebSockets, all streams together")
    ws_max_message_bytes: int = Field(default=65_536, ge=1024, le=16 * 1024 * 1024,
                                      description="largest message a client may send")
    # retention (ms; set as 30s, 15m, 12h, 7d; 0 keeps forever)
    retention_ticks: int = Field(default=7 * DAY_MS, ge=0, description="ticks kept")
    retention_books: int = Field(default=2 * DAY_MS, ge=0, description="book snapshots kept")
    retention_history: int = Field(default=365 * DAY_MS, ge=0, description=(
        "candles, features, regimes, transitions and decisions kept"))
    retention_interval_s: float = Field(default=600.0, ge=0.5, le=86_400.0,
                                        description="seconds between purges")
    # stores
    store_batch_size: int = Field(default=500, ge=1, le=100_000)
    store_flush_ms: int = Field(default=250, ge=10, le=60_000)
    store_buffer_rows: int = Field(default=200_000, ge=100)
    store_spill_after_ms: int = Field(default=1000, ge=10, le=600_000, description=(
        "while a store fails, buffered rows reach the disk journal within this"))
    stop_deadline_ms: int = Field(default=8000, ge=100, le=600_000, description=(
        "how long a stop may wait for the stores before journaling what is left"))
    # replay input
    replay_max_bytes: int = Field(
        default=2 << 30, ge=1 << 20,
        description="bytes a replay input may have, decompressed (aetherion/replay.py)")

    @field_validator("timeframes", mode="before")
    @classmethod
    def _parse_timeframes(cls, v: Any) -> Any:
        items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v)
        items = [s for s in items if s]
        if not items:
            raise ValueError("at least one timeframe is needed")
        unknown = [s for s in items if s not in TIMEFRAME_MS]
        if unknown:
            raise ValueError(f"unknown timeframe(s) {unknown}; known: {', '.join(TIMEFRAME_MS)}")
        return tuple(sorted(set(items), key=TIMEFRAME_MS.__getitem__))

    @field_validator("retention_ticks", "retention_books", "retention_history", mode="before")
    @classmethod
    def _parse_duration(cls, v: Any) -> Any:
        if not isinstance(v, str) or v.strip().isdigit():
            return v
        m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", v)
        if not m:
            raise ValueError(f"a duration is a number and s, m, h or d (like 7d), not {v!r}")
        return int(m.group(1)) * {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}[m.group(2)]

    @field_validator("cors_origins", "ws_origins", mode="before")
    @classmethod
    def _parse_origins(cls, v: Any) -> Any:
        items = [s.strip().rstrip("/") for s in v.split(",")] if isinstance(v, str) else list(v)
        bad = [s for s in items if s and s != "*" and "://" not in s]
        if bad:
            raise ValueError(f"an origin is scheme://host[:port], not {bad[0]!r}")
        return tuple(s for s in items if s)

    @field_validator("regime_weights", mode="before")
    @classmethod
    def _parse_weights(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        out: dict[str, float] = {}
        for item in filter(None, (x.strip() for x in v.split(","))):
            tf, _, w = item.partition(":")
            if tf not in TIMEFRAME_MS:
                raise ValueError(f"unknown timeframe {tf!r} in {item!r}")
            try:
                out[tf] = float(w)
            except ValueError:
                raise ValueError(f"{item!r} is not timeframe:weight") from None
            if out[tf] < 0:
                raise ValueError(f"negative weight in {item!r}")
        return out

    @field_validator("markets", mode="before")
    @classmethod
    def _parse_markets(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"not valid JSON: {e}") from None
            if not isinstance(v, list) or not v:
                raise ValueError("must be a non-empty JSON list of market objects")
        return v

    @field_validator("markets")
    @classmethod
    def _unique_ids(cls, v: tuple[MarketConfig, ...]) -> tuple[MarketConfig, ...]:
        ids = [m.id for m in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate market id(s): {dup}")
        return v

    @field_validator("sql_url")
    @classmethod
    def _sql_driver(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "mysql+asyncmy://", "mariadb+asyncmy://")):
            raise ValueError("must start with sqlite+aiosqlite:// or mysql+asyncmy://")
        return v

    @field_validator("mongo_url")
    @classmethod
    def _mongo_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return v or None

    def weight(self, timeframe: str) -> float:
        """Fusion weight of a timeframe: configured, else its rank (1 for the finest)."""
        if self.regime_weights:
            return self.regime_weights.get(timeframe, 0.0)
        return float(self.timeframes.index(timeframe) + 1)

    @property
    def finest_timeframe(self) -> str:
        return self.timeframes[0]

    def market(self, market_id: str) -> MarketConfig | None:
        return next((m for m in self.markets if m.id == market_id), None)


def settings_error_line(exc: Exception) -> str:
    """One line naming the bad setting(s) and why, for a start-up failure."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return f"bad setting: {exc}"
    parts = []
    for err in errors():
        loc = [str(p) for p in err.get("loc", ())]
        name = "AETHERION_" + loc[0].upper() if loc else "settings"
        where = "".join(f"[{p}]" for p in loc[1:])
        parts.append(f"{name}{where}: {err.get('msg', 'invalid')}")
    return "bad setting: " + "; ".join(parts)
