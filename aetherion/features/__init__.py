"""Candles and indicators: the incremental engines and their batch twins."""

from aetherion.features.candles import CandleEngine
from aetherion.features.engine import (
    BAR_VOL,
    LOG_RANGE,
    LOG_RETURN,
    LOG_VOLATILITY,
    MOMENTUM,
    NORM_VOLUME_DELTA,
    REGIME_INPUTS,
    FeatureEngine,
    RegimeInput,
    bar_vol,
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
    "BAR_VOL", "LOG_RANGE", "LOG_RETURN", "LOG_VOLATILITY", "MOMENTUM", "NORM_VOLUME_DELTA",
    "REGIME_INPUTS", "SECONDS_PER_YEAR", "CandleEngine", "FeatureEngine", "RegimeInput",
    "annualization", "atr", "bar_vol", "log_returns", "momentum", "rolling_volatility",
    "true_range", "volume_delta",
]
