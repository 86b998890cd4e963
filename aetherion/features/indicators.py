"""Batch indicators over numpy arrays: the reference twins of the incremental engine.

Every function returns an array aligned with its input, NaN while the indicator warms up.
Conventions (TA-Lib's): the true range starts at the second bar; the first ATR is the mean of the
first ``period`` true ranges (so it sits at index ``period``), then Wilder's smoothing
``ATR = (ATR_prev * (period - 1) + TR) / period``. Rolling volatility is the sample standard
deviation (ddof 1) of the last ``window`` log returns, first at index ``window``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "SECONDS_PER_YEAR", "annualization", "atr", "log_returns", "momentum", "rolling_volatility",
    "true_range", "volume_delta",
]

F = NDArray[np.float64]

#: Seconds in 365.25 days: the year of the annualized volatility (markets that trade every day).
SECONDS_PER_YEAR = 365.25 * 86_400


def annualization(timeframe_seconds: float) -> float:
    """Factor that turns a per-bar volatility into a yearly one: sqrt(bars per year)."""
    return math.sqrt(SECONDS_PER_YEAR / timeframe_seconds)


def _f(x: ArrayLike) -> F:
    return np.asarray(x, dtype=np.float64)


def true_range(high: ArrayLike, low: ArrayLike, close: ArrayLike) -> F:
    h, lo, c = _f(high), _f(low), _f(close)
    out = np.full(h.shape, np.nan)
    if h.size > 1:
        prev = c[:-1]
        out[1:] = np.maximum(h[1:] - lo[1:],
                             np.maximum(np.abs(h[1:] - prev), np.abs(lo[1:] - prev)))
    return out


def atr(high: ArrayLike, low: ArrayLike, close: ArrayLike, period: int = 14) -> F:
    if period < 1:
        raise ValueError("period must be >= 1")
    tr = true_range(high, low, close)
    out = np.full(tr.shape, np.nan)
    if tr.size <= period:
        return out
    value = float(np.mean(tr[1:period + 1]))
    out[period] = value
    for i in range(period + 1, tr.size):  # a recursion: sequential by nature
        value = (value * (period - 1) + float(tr[i])) / period
        out[i] = value
    return out


def log_returns(close: ArrayLike) -> F:
    c = _f(close)
    out = np.full(c.shape, np.nan)
    if c.size > 1:
        out[1:] = np.log(c[1:] / c[:-1])
    return out


def momentum(close: ArrayLike, window: int = 120) -> F:
    """ln(close_t / close_{t-window}), first at index ``window``."""
    if window < 1:
        raise ValueError("window must be >= 1")
    c = _f(close)
    out = np.full(c.shape, np.nan)
    if c.size > window:
        out[window:] = np.log(c[window:] / c[:-window])
    return out


def rolling_volatility(close: ArrayLike, window: int = 20) -> F:
    if window < 2:
        raise ValueError("window must be >= 2 (sample standard deviation)")
    r = log_returns(close)
    out = np.full(r.shape, np.nan)
    if r.size <= window:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(r[1:], window)
    out[window:] = np.std(windows, axis=1, ddof=1)
    return out


def volume_delta(buy_volume: ArrayLike, sell_volume: ArrayLike) -> F:
    """Buy minus sell volume (aggressor side); NaN where either side is unknown (NaN)."""
    return _f(buy_volume) - _f(sell_volume)
