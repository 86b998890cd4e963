"""Settings of the regime stage, gathered from ``aetherion.config.Settings`` (``REGIME_*``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aetherion.domain import REGIMES, STRATEGIES, TIMEFRAME_MS

if TYPE_CHECKING:
    from aetherion.config import Settings

__all__ = ["DEFAULT_STRATEGIES", "RegimeConfig"]

#: The active strategy of each stable regime.
DEFAULT_STRATEGIES: dict[str, str] = {
    "bull": "trend_long", "bear": "trend_short", "sideways": "mean_reversion",
    "crisis": "risk_off",
}


class RegimeConfig(BaseModel):
    """What the regime engine needs; see ``docs/regime.md`` for each value's role."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=500, ge=50, le=500, description="training window, bars")
    min_bars: int = Field(default=200, ge=50, le=500, description="valid bars before a model")
    retrain_bars: int = Field(default=250, ge=1, description="valid bars between retrains")
    restarts: int = Field(default=4, ge=1, le=50, description="seeded restarts per fit")
    n_iter: int = Field(default=100, ge=5, le=10_000, description="EM iterations per restart")
    seed: int = 7
    threshold: float = Field(default=0.6, gt=0.0, le=1.0, description="stability probability")
    k: int = Field(default=3, ge=1, le=1000, description="stability: consecutive bars")
    weights: dict[str, float] = Field(
        default_factory=dict, description="fusion weight per timeframe; empty: 1, 2, 3... by rank")
    strategies: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STRATEGIES))

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for tf, w in v.items():
            if tf not in TIMEFRAME_MS:
                raise ValueError(f"unknown timeframe {tf!r} in weights")
            if not w >= 0:  # also catches NaN
                raise ValueError(f"weight of {tf} must be >= 0, not {w}")
        return v

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: dict[str, str]) -> dict[str, str]:
        if set(v) != set(REGIMES):
            raise ValueError(f"strategies must map exactly {', '.join(REGIMES)}")
        bad = sorted(s for s in v.values() if s not in STRATEGIES)
        if bad:
            raise ValueError(f"unknown strategy {bad}; known: {', '.join(STRATEGIES)}")
        return v

    @classmethod
    def from_settings(cls, s: Settings) -> RegimeConfig:
        return cls(
            window=s.regime_window, min_bars=s.regime_min_bars,
            retrain_bars=s.regime_retrain_bars, restarts=s.regime_restarts,
            n_iter=s.regime_n_iter, seed=s.regime_seed, threshold=s.regime_threshold,
            k=s.regime_k, weights=dict(s.regime_weights),
        )

    def weight(self, timeframe: str, timeframes: Sequence[str]) -> float:
        """Fusion weight of one of ``timeframes`` (finest first): configured, else its rank."""
        if self.weights:
            return self.weights.get(timeframe, 0.0)
        return float(list(timeframes).index(timeframe) + 1)
