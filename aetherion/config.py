"""Settings (environment ``AETHERION_<NAME>`` or ``.env``) and market definitions."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aetherion.decision.config import DecisionConfig
from aetherion.domain import TIMEFRAME_MS
from aetherion.ingest import registry
from aetherion.regime.config import RegimeConfig

__all__ = ["DEFAULT_MARKETS", "MarketConfig", "Settings", "settings_error_line"]

_MARKET_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
STAGES = ("regime", "decision")  # the nested stage configs, set by flat names too


class MarketConfig(BaseModel):
    """One named instrument stream. Credentials only by the names of the env vars holding them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    venue: Literal["crypto", "us", "nse"]
    connector: str  # a name in aetherion.ingest.registry
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

    @field_validator("connector")
    @classmethod
    def _known_connector(cls, v: str) -> str:
        if v not in registry.REGISTRY:
            raise ValueError(f"no connector {v!r}; available: {', '.join(registry.names())}")
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
        env_prefix="AETHERION_", env_file=".env", extra="ignore", frozen=True,
        env_nested_delimiter="_", env_nested_max_split=1,  # AETHERION_REGIME_WINDOW: regime.window
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

    # cluster mode (docs/scale-out.md): set NATS_URL and the instance joins a cluster
    nats_url: str | None = Field(default=None, description=(
        "NATS with JetStream (nats://host:4222,...); unset: one process, no cluster"))
    instance_id: str | None = Field(default=None, max_length=64, description=(
        "this instance's name in the cluster; unset: <host name>-<pid>"))
    lease_ttl_s: float = Field(default=5.0, ge=1.0, le=300.0, description=(
        "a market's owner that stops renewing for this long loses it to another instance"))
    cluster_name: str = Field(default="aeth", pattern=r"^[a-z][a-z0-9_]{0,31}$", description=(
        "names this cluster's NATS buckets, stream and subjects: several clusters (or test "
        "runs) can share one NATS"))
    cluster_replicas: int = Field(default=1, ge=1, le=5, description=(
        "replicas of the cluster's NATS buckets and stream (3 on a NATS cluster)"))

    # simulator
    sim_rate: float = Field(default=50.0, gt=0, le=100_000, description="trades/s per market")
    sim_seed: int = 7
    sim_regime_seconds: float = Field(default=1800.0, gt=0, description="mean calm-regime stay")

    # candle engine
    history_bars: int = Field(
        default=600, ge=0, le=100_000,
        description="closed bars per timeframe fetched from the venue at start to warm up")
    bar_grace_ms: int = Field(default=500, ge=0, le=60_000)

    # the stages (docs/regime.md, docs/decision.md): AETHERION_REGIME_<FIELD> and
    # AETHERION_DECISION_<FIELD> set one field each, as do regime_<field>=... keyword arguments
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)

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

    @model_validator(mode="before")
    @classmethod
    def _fold_stage_fields(cls, data: Any) -> Any:
        """``regime_window=300`` → ``regime={"window": 300}`` (and ``decision_*`` alike): the
        flat names users set stay valid for the nested configs."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for section in STAGES:
            flat = {k[len(section) + 1:]: out.pop(k) for k in list(out)
                    if k.startswith(section + "_")}
            if flat:
                nested = out.get(section) or {}
                if isinstance(nested, BaseModel):
                    nested = nested.model_dump()
                out[section] = {**nested, **flat}
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

    def decision_config(self) -> DecisionConfig:
        """The decision config with its timeframe resolved against ``timeframes`` (raises
        :class:`ValueError` when it is not one of them)."""
        return self.decision.resolved(self.timeframes)

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
        if len(loc) > 1 and loc[0] in STAGES:  # a nested stage field: its flat name
            loc = [f"{loc[0]}_{loc[1]}", *loc[2:]]
        name = "AETHERION_" + loc[0].upper() if loc else "settings"
        where = "".join(f"[{p}]" for p in loc[1:])
        parts.append(f"{name}{where}: {err.get('msg', 'invalid')}")
    return "bad setting: " + "; ".join(parts)
