"""Incremental features of one market and timeframe: constant work per closed bar.

Per bar: log return, true range, ATR (Wilder, TA-Lib's seeding), rolling volatility of the last
``vol_window`` log returns (sample std over a fixed-size window, never the history) and its
annualized form, volume delta with its running sum and normalized form (``None`` when the bar's
trades carry no aggressor side), and the regime model's inputs in ``Features.extra`` (see
:data:`REGIME_INPUTS`). The batch functions in :mod:`aetherion.features.indicators` compute the
same numbers over arrays. Formulas, warm-up lengths and revisions: ``docs/features.md``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from aetherion.domain import TIMEFRAME_MS, Bar, Features
from aetherion.features.indicators import annualization

__all__ = [
    "BAR_VOL", "LOG_RANGE", "LOG_RETURN", "LOG_VOLATILITY", "MOMENTUM", "NORM_VOLUME_DELTA",
    "REGIME_INPUTS", "FeatureEngine", "RegimeInput", "bar_vol",
]

log = logging.getLogger(__name__)

#: A regime input: reads the bar, its features and the recent closes (oldest first, ending with
#: this bar's; at most ``maxlen = momentum_window + 1``) and returns a number or ``None``.
RegimeInput = Callable[[Bar, Features, "deque[float]"], "float | None"]

# Names of the regime inputs in ``Features.extra`` (and in storage and the API payloads).
LOG_RETURN = "log_return"  # = Features.log_return
LOG_VOLATILITY = "log_volatility"  # ln(Features.volatility); None when it is 0 or warming up
NORM_VOLUME_DELTA = "norm_volume_delta"  # = Features.norm_volume_delta (None when unsided)
LOG_RANGE = "log_range"  # ln(high / low): a one-bar volatility estimate (Parkinson's range)
MOMENTUM = "momentum"  # ln(close_t / close_{t-w}), w = momentum_window (120 by default)
BAR_VOL = "bar_vol"  # one bar's volatility from its open, high, low and close (``bar_vol``)
PARKINSON_SHARE = 0.2  # of ``bar_vol``'s variance; the rest is Rogers & Satchell's


def bar_vol(o: float, h: float, lo: float, c: float) -> float | None:
    """One bar's volatility (log-price units): the square root of a variance estimate that is
    four fifths Rogers & Satchell's, u(u - c) + d(d - c) with u, d, c the high, low and close
    over the open in logs, and one fifth Parkinson's, ln(high / low)^2 / (4 ln 2). Rogers &
    Satchell's is not biased by a drift and, on a Brownian path, its terms do not depend on the
    bar's return (given the return, each is exponential with mean variance / 2), so a trending
    bar's wide range is not read again as volatility; the regime model then tells states apart
    by drift through the return alone (the log range counted a big move twice: the filter was
    overconfident where regimes differ by drift). It is 0 on a bar that opens and closes at its
    extremes; Parkinson's fifth keeps it above 0 wherever high > low. None for an inconsistent
    bar (a high below the open or close, a low above)."""
    u, d, r = math.log(h / o), math.log(lo / o), math.log(c / o)
    if not d <= min(r, 0.0) <= max(r, 0.0) <= u:
        return None
    span = u - d
    var = (1 - PARKINSON_SHARE) * (u * (u - r) + d * (d - r)) \
        + PARKINSON_SHARE * span * span / (4 * math.log(2))
    return math.sqrt(var)


def _log_or_none(x: float | None) -> float | None:
    return math.log(x) if x is not None and x > 0 else None


#: The regime inputs by name. Adding one is one entry here; it then appears in ``extra``.
REGIME_INPUTS: dict[str, RegimeInput] = {
    LOG_RETURN: lambda b, f, c: f.log_return,
    LOG_VOLATILITY: lambda b, f, c: _log_or_none(f.volatility),
    NORM_VOLUME_DELTA: lambda b, f, c: f.norm_volume_delta,
    LOG_RANGE: lambda b, f, c: math.log(b.high / b.low),
    MOMENTUM: lambda b, f, c: math.log(c[-1] / c[0]) if len(c) == c.maxlen else None,
    BAR_VOL: lambda b, f, c: bar_vol(b.open, b.high, b.low, b.close),
}


def _valid(bar: Bar) -> bool:
    o, h, lo, c = bar.open, bar.high, bar.low, bar.close
    return o > 0 and h > 0 and lo > 0 and c > 0 and math.isfinite(o + h + lo + c)


class FeatureEngine:
    def __init__(self, market: str, timeframe: str, atr_period: int = 14,
                 vol_window: int = 20, momentum_window: int = 120) -> None:
        if atr_period < 1 or vol_window < 2 or momentum_window < 1:
            raise ValueError("need atr_period >= 1, vol_window >= 2 and momentum_window >= 1")
        if timeframe not in TIMEFRAME_MS:
            raise ValueError(f"unknown timeframe {timeframe!r}")
        self.market, self.timeframe = market, timeframe
        self.atr_period, self.vol_window = atr_period, vol_window
        self.momentum_window = momentum_window
        self.ann = annualization(TIMEFRAME_MS[timeframe] / 1000)
        self.prev_close: float | None = None
        self.last_open_time: int | None = None
        self.tr_seen = 0  # true ranges so far, until the ATR is seeded
        self.tr_sum = 0.0
        self.atr: float | None = None
        self.returns: deque[float] = deque(maxlen=vol_window)
        self.closes: deque[float] = deque(maxlen=momentum_window + 1)
        self.cum_delta = 0.0
        self.rejected = 0  # bars with unusable prices (counted, logged, skipped)
        # What the latest bar changed, so a revision of it can be replayed in O(1); None when
        # there is nothing to undo.
        self._undo: dict[str, Any] | None = None

    def on_bar(self, bar: Bar) -> Features:
        """Features of a newly closed bar (O(1) in the history; O(vol_window) for the std)."""
        self.last_open_time = bar.open_time
        if not _valid(bar):
            self.rejected += 1
            self._undo = None
            log.warning("features %s %s: skipped bar %d with unusable prices o=%r h=%r l=%r c=%r",
                        self.market, self.timeframe, bar.open_time, bar.open, bar.high, bar.low,
                        bar.close)
            return Features(self.market, self.timeframe, bar.open_time, bar.close, None, None,
                            None, None, None, None, None, None)
        return self._step(bar)

    def on_revision(self, bar: Bar) -> None:
        """A closed bar changed (or appeared late) after features were emitted for its time.

        Emitted features are never rewritten. If ``bar`` revises the latest bar fed, the state
        is rolled back to before that bar and the revised bar is applied in its place, so the
        next bar's true range, return, ATR, volatility window, momentum and running volume delta
        all build on the revised bar, exactly as if it had been the one seen. A revision of an
        older bar, or a bar that appears after a later one, changes nothing ahead."""
        if bar.open_time != self.last_open_time or self._undo is None or not _valid(bar):
            return
        u = self._undo
        self.prev_close, self.tr_seen, self.tr_sum = u["prev_close"], u["tr_seen"], u["tr_sum"]
        self.atr, self.cum_delta = u["atr"], u["cum_delta"]
        if u["prev_close"] is not None:  # that bar appended a return
            self.returns.pop()
            if u["evicted_return"] is not None:
                self.returns.appendleft(u["evicted_return"])
        self.closes.pop()
        if u["evicted_close"] is not None:
            self.closes.appendleft(u["evicted_close"])
        self._step(bar)

    def _step(self, bar: Bar) -> Features:
        r, c = self.returns, self.closes
        prev = self.prev_close
        self._undo = {
            "prev_close": prev, "tr_seen": self.tr_seen, "tr_sum": self.tr_sum, "atr": self.atr,
            "cum_delta": self.cum_delta,
            "evicted_return": r[0] if prev is not None and len(r) == r.maxlen else None,
            "evicted_close": c[0] if len(c) == c.maxlen else None,
        }
        log_return = tr = None
        if prev is not None:
            log_return = math.log(bar.close / prev)
            tr = max(bar.high - bar.low, abs(bar.high - prev), abs(bar.low - prev))
            self._atr_step(tr)
            r.append(log_return)
        c.append(bar.close)
        vol = self._volatility()
        delta = cum = norm = None
        if bar.sided:
            delta = bar.buy_volume - bar.sell_volume
            self.cum_delta += delta
            cum = self.cum_delta
            norm = delta / bar.volume if bar.volume > 0 else None
        self.prev_close = bar.close
        f = Features(
            self.market, self.timeframe, bar.open_time, bar.close, log_return, tr, self.atr,
            vol, vol * self.ann if vol is not None else None, delta, cum, norm,
        )
        for name, fn in REGIME_INPUTS.items():
            f.extra[name] = fn(bar, f, c)
        return f

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
        # Two passes over the fixed window (running sums of squares lose the 1e-9 when a calm
        # window follows a volatile one); math.dist is the root of the summed squared deviations.
        r = self.returns
        n = len(r)
        if n < self.vol_window:
            return None
        return math.dist(r, [sum(r) / n] * n) / math.sqrt(n - 1)

    # ---- restart --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-able snapshot; :meth:`from_state` continues from it exactly."""
        return {
            "market": self.market, "timeframe": self.timeframe, "atr_period": self.atr_period,
            "vol_window": self.vol_window, "momentum_window": self.momentum_window,
            "prev_close": self.prev_close, "last_open_time": self.last_open_time,
            "tr_seen": self.tr_seen, "tr_sum": self.tr_sum, "atr": self.atr,
            "returns": list(self.returns), "closes": list(self.closes),
            "cum_delta": self.cum_delta, "rejected": self.rejected, "undo": self._undo,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> FeatureEngine:
        """Restore a :meth:`state` snapshot (snapshots from before momentum start it afresh)."""
        try:
            e = cls(d["market"], d["timeframe"], d["atr_period"], d["vol_window"],
                    d.get("momentum_window", 120))
            e.prev_close, e.last_open_time = d["prev_close"], d["last_open_time"]
            e.tr_seen, e.tr_sum, e.atr = d["tr_seen"], d["tr_sum"], d["atr"]
            e.returns.extend(d["returns"])
            e.closes.extend(d.get("closes", ()))
            e.cum_delta, e.rejected = d["cum_delta"], d.get("rejected", 0)
            e._undo = d.get("undo")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a FeatureEngine state: {exc!r}") from exc
        return e
