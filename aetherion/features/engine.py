"""Incremental features of one market and timeframe: constant work per closed bar.

Per bar: log return, true range, ATR (Wilder, TA-Lib's seeding), rolling volatility of the last
``vol_window`` log returns (sample std, over a fixed-size window, never the history) and its
annualized form, volume delta with its running sum and normalized form (``None`` when the bar's
trades carry no aggressor side), and the regime model's inputs in ``extra`` (see
:data:`REGIME_INPUTS`). The batch functions in :mod:`aetherion.features.indicators` compute the
same numbers over arrays.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from aetherion.domain import TIMEFRAME_MS, Bar, Features
from aetherion.features.indicators import annualization

__all__ = ["REGIME_INPUTS", "FeatureEngine"]

#: Inputs of the regime model, by name: each reads the bar and the features computed so far.
#: Adding one is one line here; it then appears in ``Features.extra`` (and in storage and API).
REGIME_INPUTS: dict[str, Callable[[Bar, Features], float | None]] = {
    # the bar's log high/low range: a one-bar volatility estimate (Parkinson's range)
    "log_range": lambda b, f: math.log(b.high / b.low) if b.low > 0 else None,
}


class FeatureEngine:
    def __init__(self, market: str, timeframe: str, atr_period: int = 14,
                 vol_window: int = 20) -> None:
        if atr_period < 1 or vol_window < 2:
            raise ValueError("atr_period must be >= 1 and vol_window >= 2")
        self.market, self.timeframe = market, timeframe
        self.atr_period, self.vol_window = atr_period, vol_window
        self.ann = annualization(TIMEFRAME_MS[timeframe] / 1000)
        self.prev_close: float | None = None
        self.last_open_time: int | None = None
        self.tr_seen = 0  # true ranges so far (for the ATR seed)
        self.tr_sum = 0.0
        self.atr: float | None = None
        self.returns: deque[float] = deque(maxlen=vol_window)
        self.cum_delta = 0.0

    def on_bar(self, bar: Bar) -> Features:
        """Features of a newly closed bar."""
        prev = self.prev_close
        log_return = tr = None
        if prev is not None:
            log_return = math.log(bar.close / prev)
            tr = max(bar.high - bar.low, abs(bar.high - prev), abs(bar.low - prev))
            self._atr_step(tr)
            self.returns.append(log_return)
        vol = self._volatility()
        delta = cum = norm = None
        if bar.sided:
            delta = bar.buy_volume - bar.sell_volume
            self.cum_delta += delta
            cum = self.cum_delta
            norm = delta / bar.volume if bar.volume > 0 else None
        self.prev_close, self.last_open_time = bar.close, bar.open_time
        f = Features(
            self.market, self.timeframe, bar.open_time, bar.close, log_return, tr, self.atr,
            vol, vol * self.ann if vol is not None else None, delta, cum, norm,
        )
        for name, fn in REGIME_INPUTS.items():
            f.extra[name] = fn(bar, f)
        return f

    def on_revision(self, bar: Bar) -> None:
        """A closed bar changed after its features were emitted. Those features stay; if it is
        the latest bar, the next bar's true range and return build on its revised close. A
        revision of an older bar (or a late first appearance) changes nothing ahead."""
        if bar.open_time == self.last_open_time:
            self.prev_close = bar.close

    def _atr_step(self, tr: float) -> None:
        n = self.atr_period
        if self.atr is not None:
            self.atr = (self.atr * (n - 1) + tr) / n
            return
        self.tr_seen += 1
        self.tr_sum += tr
        if self.tr_seen == n:
            self.atr = self.tr_sum / n

    def _volatility(self) -> float | None:
        r = self.returns
        n = len(r)
        if n < self.vol_window:
            return None
        mean = sum(r) / n
        return math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1))

    # ---- restart --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "market": self.market, "timeframe": self.timeframe, "atr_period": self.atr_period,
            "vol_window": self.vol_window, "prev_close": self.prev_close,
            "last_open_time": self.last_open_time, "tr_seen": self.tr_seen,
            "tr_sum": self.tr_sum, "atr": self.atr, "returns": list(self.returns),
            "cum_delta": self.cum_delta,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> FeatureEngine:
        e = cls(d["market"], d["timeframe"], d["atr_period"], d["vol_window"])
        e.prev_close, e.last_open_time = d["prev_close"], d["last_open_time"]
        e.tr_seen, e.tr_sum, e.atr = d["tr_seen"], d["tr_sum"], d["atr"]
        e.returns.extend(d["returns"])
        e.cum_delta = d["cum_delta"]
        return e
