"""Candles and indicators: the incremental engines and their batch twins."""

from aetherion.features.candles import CandleEngine
from aetherion.features.engine import REGIME_INPUTS, FeatureEngine
from aetherion.features.indicators import (
    SECONDS_PER_YEAR,
    annualization,
    atr,
    log_returns,
    rolling_volatility,
    true_range,
    volume_delta,
)

__all__ = [
    "REGIME_INPUTS", "SECONDS_PER_YEAR", "CandleEngine", "FeatureEngine", "annualization", "atr",
    "log_returns", "rolling_volatility", "true_range", "volume_delta",
]
