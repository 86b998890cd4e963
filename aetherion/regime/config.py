"""Settings of the regime stage (``AETHERION_REGIME_*``), defaults in ``docs/regime.md``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

from aetherion.domain import TIMEFRAME_MS

__all__ = ["RegimeConfig"]


class RegimeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=16_000, ge=100, le=20_000,
                        description="bars EM is fitted on (the newest)")
    memory: int = Field(default=20_000, ge=100, le=200_000,
                        description="bars kept per timeframe for the long-run scale")
    min_bars: int = Field(default=200, ge=50, le=20_000,
                          description="valid bars before the first model")
    retrain_bars: int = Field(default=250, ge=1, description="bars between retrains")
    stay_bars: float = Field(default=200.0, ge=2.0, le=1e6,
                             description="expected stay in a regime, bars")
    stay_weight: float = Field(
        default=0.03, ge=0.0, le=100.0,
        description="weight of the expected stay against the data's own, x the window; 0: fixed")
    crisis_ratio: float = Field(
        default=2.0, gt=1.0, le=100.0,
        description="crisis: volatility at least this many times the long-run typical level")
    tail_nu: float = Field(
        default=10.0, ge=0.0, le=1e6,
        description="Student-t degrees of freedom of a state's return given the bar's volatility; "
                    "0: Gaussian")
    temper_floor: float = Field(
        default=0.4, gt=0.0, le=1.0,
        description="least weight the filter gives the evidence between calm states; 1: full")
    restarts: int = Field(default=1, ge=1, le=50, description="EM starts per fit")
    n_iter: int = Field(default=100, ge=5, le=10_000, description="EM iterations per start")
    seed: int = Field(default=7, description="random seed of the fits")
    threshold: float = Field(default=0.6, gt=0.0, le=1.0,
                             description="probability a new regime must reach to be adopted")
    k: int = Field(default=3, ge=1, le=1000,
                   description="bars the new regime must hold the threshold for")
    weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="timeframe:weight,...; unset: the finest n, the next n - 1, ... the coarsest 1")

    @field_validator("tail_nu")
    @classmethod
    def _check_tail_nu(cls, v: float) -> float:
        if 0 < v <= 2:
            raise ValueError("tail_nu must be 0 (Gaussian) or above 2 (a finite variance)")
        return v

    @field_validator("weights", mode="before")
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

    def weight(self, timeframe: str, timeframes: Sequence[str]) -> float:
        """Fusion weight of a timeframe: configured, else the finest weighs most (n for the
        finest of n, 1 for the coarsest): a coarser timeframe's last closed bar is older and
        spans several of the deciding timeframe's bars, so it lags a regime that changes
        between them (docs/regime.md)."""
        if self.weights:
            return self.weights.get(timeframe, 0.0)
        return float(len(timeframes) - list(timeframes).index(timeframe))
