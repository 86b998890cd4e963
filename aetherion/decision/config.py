"""Settings of the decision policy (``AETHERION_DECISION_*``), defaults in ``docs/decision.md``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aetherion.domain import TIMEFRAME_MS

__all__ = ["DecisionConfig", "default_timeframe"]

_MIN_DEFAULT_MS = TIMEFRAME_MS["1m"]


def default_timeframe(timeframes: Sequence[str]) -> str:
    """The finest of ``timeframes`` that is at least ``1m``; the coarsest when all are finer."""
    if not timeframes:
        raise ValueError("no timeframes configured")
    ordered = sorted(timeframes, key=TIMEFRAME_MS.__getitem__)
    return next((tf for tf in ordered if TIMEFRAME_MS[tf] >= _MIN_DEFAULT_MS), ordered[-1])


class DecisionConfig(BaseModel):
    """One market's policy parameters. Thresholds are in ATR units of the deciding timeframe."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_confidence: float = Field(default=0.6, ge=0.0, le=1.0,
                                  description="fused confidence needed to open a position")
    cooldown_bars: int = Field(default=5, ge=0, le=100_000,
                               description="bars after a BUY/SELL in which nothing opens")
    timeframe: str | None = Field(default=None,
                                  description="deciding timeframe; None: default_timeframe()")
    allow_short: bool = Field(default=False, description="shorts lost money on every series")
    rules: Literal["hold", "signals"] = Field(
        default="hold", description="hold: every strategy but risk_off holds its direction "
        "(long, or short for trend_short when shorts are allowed); signals: the ATR rules")
    size_by_volatility: bool = Field(default=True, description=(
        "exposure = min(1, (long-run volatility / recent volatility) ** vol_power), in steps "
        "of size_step"))
    vol_power: float = Field(default=2.0, gt=0.0, le=10.0, description=(
        "2: sized by inverse variance (volatility-managed, Moreira and Muir 2017); 1: by the "
        "plain volatility ratio"))
    vol_bars: int = Field(default=20, ge=2, le=10_000, description="recent volatility window")
    vol_halflife_bars: int = Field(default=500, ge=1, le=1_000_000,
                                   description="half-life of the long-run volatility level")
    size_step: float = Field(default=0.25, gt=0.0, le=1.0, description="exposure steps")
    min_change: float = Field(default=0.5, ge=0.0, le=2.0, description=(
        "smallest resize of a held position (entries and exits always go)"))
    trend_filter: bool = Field(default=True, description=(
        "hold a position only with the long-run trend: no long while the close is below both "
        "its trend_ma_bars mean and its close trend_momentum_bars ago (shorts mirrored)"))
    trend_ma_bars: int = Field(default=200, ge=2, le=100_000,
                               description="trend filter: the moving average's closes")
    trend_momentum_bars: int = Field(default=252, ge=1, le=100_000,
                                     description="trend filter: the momentum's lookback")
    momentum_bars: int = Field(default=20, ge=1, le=10_000,
                               description="trend: momentum = close_t - close_{t-N}")
    trend_entry_atr: float = Field(default=1.5, gt=0.0, le=1000.0)
    trend_exit_atr: float = Field(default=0.0, ge=-1000.0, le=1000.0)
    mean_bars: int = Field(default=20, ge=2, le=10_000,
                           description="mean reversion: rolling mean of the last N closes")
    mr_entry_atr: float = Field(default=1.5, gt=0.0, le=1000.0)
    mr_exit_atr: float = Field(default=0.25, ge=0.0, le=1000.0)

    @field_validator("timeframe")
    @classmethod
    def _known_timeframe(cls, v: str | None) -> str | None:
        v = (v or "").strip() or None  # unset or empty: the default
        if v is not None and v not in TIMEFRAME_MS:
            raise ValueError(f"unknown timeframe {v!r}; known: {', '.join(TIMEFRAME_MS)}")
        return v

    @model_validator(mode="after")
    def _exit_inside_entry(self) -> DecisionConfig:
        if self.trend_exit_atr >= self.trend_entry_atr:
            raise ValueError("trend_exit_atr must be below trend_entry_atr")
        if self.mr_exit_atr >= self.mr_entry_atr:
            raise ValueError("mr_exit_atr must be below mr_entry_atr")
        return self

    def resolved(self, timeframes: Sequence[str]) -> DecisionConfig:
        """This config with ``timeframe`` set (the default when unset), checked against the
        configured ``timeframes``."""
        tf = self.timeframe or default_timeframe(timeframes)
        if tf not in timeframes:
            raise ValueError(f"decision timeframe {tf!r} is not among the configured "
                             f"timeframes {list(timeframes)}")
        return self.model_copy(update={"timeframe": tf})
