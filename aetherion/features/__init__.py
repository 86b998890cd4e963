"""Candles and indicators: the incremental engines and their batch twins."""

from aetherion.features.candles import CandleEngine
from aetherion.features.engine import (
    LOG_RANGE,
    LOG_RETURN,
    LOG_VOLATILITY,
    MOMENTUM,
    NORM_VOLUME_DELTA,
    REGIME_INPUTS,
    FeatureEngine,
    RegimeInput,
)
from aetherion.features.indicators import (
    SECONDS_PER_YEAR,
    annualization,
    atr,
    log_returns,
    momentum,
    rolling_volatility,
    true_range,
    volume_delta,
)

__all__ = [
    "LOG_RANGE", "LOG_RETURN", "LOG_VOLATILITY", "MOMENTUM", "NORM_VOLUME_DELTA", "REGIME_INPUTS",
    "SECONDS_PER_YEAR", "CandleEngine", "FeatureEngine", "RegimeInput", "annualization", "atr",
    "log_returns", "momentum", "rolling_volatility", "true_range", "volume_delta",
]
