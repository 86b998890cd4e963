"""The decision policy of one market: strategy → BUY / SELL / HOLD on each closed bar.

Synchronous and free of I/O, O(window) per bar with fixed windows. Each bar runs three steps:

1. **signal** — the rule of the crisis regime or of the active strategy names the position it
   wants (``long`` / ``flat`` / ``short``) or none (keep);
2. **limits** — the strategy's own range (trend_long never short, trend_short never long,
   risk_off flat) and ``allow_short`` clip that target;
3. **gates** — a step that *opens* a position (flat → long/short) needs a known regime, the
   minimum fused confidence and an elapsed cooldown; a step towards flat is never held back.

The position moves one step per action (``BUY``: short → flat → long, ``SELL`` the other way).
A signal the limits or gates refused is a ``HOLD`` with ``suppressed`` and the reason. Every
decision carries ``exposure``, the signed fraction of capital held after the bar: the position's
direction times its size, which (``size_by_volatility``) is min(1, (long-run volatility / recent
volatility) ** ``vol_power``) in steps of ``size_step``; a held position is resized only by
``min_change`` or more, a larger size is gated like an opening, a smaller one never. Rules and
defaults, and the evidence for them: ``docs/decision.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from aetherion.decision.config import DecisionConfig
from aetherion.decision.model import (
    POSITION_LEVEL,
    Action,
    Decision,
    Inputs,
    PolicyState,
    Position,
)
from aetherion.domain import Bar, Features, RegimeUpdate

__all__ = ["DecisionPolicy"]

log = logging.getLogger(__name__)

_LEVEL: Final = POSITION_LEVEL
_NAME: Final[dict[int, Position]] = {-1: "short", 0: "flat", 1: "long"}
_ACTION: Final[dict[int, Action]] = {1: "BUY", 0: "HOLD", -1: "SELL"}
#: The positions each strategy may hold (lowest, highest); anything else: both ways.
_RANGE: Final[dict[str, tuple[int, int]]] = {
    "trend_long": (0, 1), "trend_short": (-1, 0), "mean_reversion": (-1, 1), "risk_off": (0, 0),
}


@dataclass(slots=True)
class _Signal:
    target: int | None  # the wanted position level; None: keep the current one
    rule: str
    why: str
    inputs: Inputs = field(default_factory=dict)


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Sizer:
    """Recent volatility (sample std of the last ``n`` log returns) against its long-run level
    (an exponential average of its log, half-life ``halflife`` bars): both from closes only, so
    history bars warm it up like live ones. The size is their ratio to the power ``power``."""

    def __init__(self, n: int, halflife: int, power: float) -> None:
        self.returns: deque[float] = deque(maxlen=n)
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self.prev: float | None = None
        self.vol: float | None = None
        self.level: float | None = None  # log of the long-run volatility
        self.power = power

    def update(self, close: float) -> None:
        if self.prev is not None:
            self.returns.append(math.log(close / self.prev))
        self.prev = close
        r = self.returns
        if len(r) < (r.maxlen or 0):
            return
        n = len(r)
        vol = math.dist(r, [math.fsum(r) / n] * n) / math.sqrt(n - 1)  # sample std
        if vol <= 0:
            return
        self.vol = vol
        lv = math.log(vol)
        self.level = lv if self.level is None else self.level + self.alpha * (lv - self.level)

    def size(self, step: float) -> float:
        """min(1, (long-run / recent volatility) ** power) rounded to ``step`` (at least one
        step); 1 while warming up."""
        if self.vol is None or self.level is None:
            return 1.0
        raw = math.exp(min(0.0, self.power * (self.level - math.log(self.vol))))  # <= 1
        return max(step, min(1.0, round(raw / step) * step))


class _Trend:
    """The long-run trend from closes: +1 when the close is above its ``ma``-close mean or
    above the close ``mom`` bars ago, -1 when it is below both, 0 until both can be read.
    O(1) a bar: a running sum, recomputed exactly every ``ma`` closes so it cannot drift."""

    def __init__(self, ma: int, mom: int) -> None:
        self.closes: deque[float] = deque(maxlen=mom + 1)
        self.window: deque[float] = deque(maxlen=ma)
        self.ma, self.mom = ma, mom
        self.total, self.since_exact = 0.0, 0

    def update(self, close: float) -> None:
        if len(self.window) == self.ma:
            self.total -= self.window[0]
        self.window.append(close)
        self.closes.append(close)
        self.since_exact += 1
        if self.since_exact >= self.ma:
            self.total, self.since_exact = math.fsum(self.window), 0
        else:
            self.total += close

    def read(self) -> tuple[int, Inputs]:
        if len(self.window) < self.ma or len(self.closes) < self.mom + 1:
            return 0, {}
        close, mean, ago = self.closes[-1], self.total / self.ma, self.closes[0]
        up, down = close > mean or close > ago, close < mean and close < ago
        return (1 if up else -1 if down else 0), {"trend_mean": mean, "trend_close_ago": ago}


class DecisionPolicy:
    """The policy of one market on its deciding timeframe (``cfg.timeframe``, resolved)."""

    def __init__(self, market: str, cfg: DecisionConfig,
                 restored: PolicyState | None = None) -> None:
        if cfg.timeframe is None:
            raise ValueError("DecisionConfig.timeframe is unset: use cfg.resolved(timeframes)")
        self.market, self.cfg, self.timeframe = market, cfg, cfg.timeframe
        s = restored or PolicyState()
        self.position = _LEVEL[s.position]
        # An exposure that contradicts the position (a state from before exposures): the level.
        self.exposure = s.exposure if s.exposure * self.position > 0 else float(self.position)
        self.last_bar_time = s.last_bar_time
        self.last_action_time = s.last_action_time
        self.bars_since_action = s.bars_since_action
        self._closes: deque[float] = deque(maxlen=cfg.momentum_bars + 1)
        self._means: deque[float] = deque(maxlen=cfg.mean_bars)
        self._window_time: int | None = None
        self._sizer = _Sizer(cfg.vol_bars, cfg.vol_halflife_bars, cfg.vol_power)
        self._long_run = _Trend(cfg.trend_ma_bars, cfg.trend_momentum_bars)
        self.rejected = 0  # bars with an unusable close (counted, logged, skipped)

    def state(self) -> PolicyState:
        return PolicyState(_NAME[self.position], self.last_bar_time, self.last_action_time,
                           self.bars_since_action, self.exposure)

    @property
    def cooldown_left(self) -> int:
        """Bars from the next one on in which a new position may not be opened."""
        if self.bars_since_action is None:
            return 0
        return max(0, self.cfg.cooldown_bars - self.bars_since_action)

    def observe(self, bar: Bar) -> None:
        """Feed a closed bar to the price windows without deciding: warm-up from history.
        ``on_bar`` does it too; a bar at or before the newest one seen is ignored."""
        if bar.timeframe != self.timeframe or not bar.closed or not _usable(bar.close):
            return
        if self._window_time is not None and bar.open_time <= self._window_time:
            return
        self._closes.append(bar.close)
        self._means.append(bar.close)
        self._sizer.update(bar.close)
        self._long_run.update(bar.close)
        self._window_time = bar.open_time

    def on_bar(self, bar: Bar, features: Features, fused: RegimeUpdate) -> Decision | None:
        """The decision on a newly closed bar (revision 0) of the deciding timeframe.

        ``None`` for a bar already decided (open time at or before the newest decided one: a
        re-delivery, a revision, a replay after a restart), a revision, or an unusable close."""
        if bar.timeframe != self.timeframe:
            raise ValueError(f"{self.market}: policy decides on {self.timeframe}, "
                             f"got a {bar.timeframe} bar")
        if not bar.closed or bar.revision != 0 or (
                self.last_bar_time is not None and bar.open_time <= self.last_bar_time):
            self.observe(bar)
            return None
        if not _usable(bar.close):
            self.rejected += 1
            log.warning("decision %s %s: skipped bar %d with unusable close %r", self.market,
                        self.timeframe, bar.open_time, bar.close)
            return None
        self.observe(bar)
        if self.bars_since_action is not None:
            self.bars_since_action += 1
        sig = self._signal(bar.close, features.atr, fused)
        if self.cfg.trend_filter and sig.target:
            sig = self._with_trend(sig)
        return self._decide(bar, features, fused, sig)

    # signal ---------------------------------------------------------------------------------

    def _with_trend(self, sig: _Signal) -> _Signal:
        """A long against a long-run downtrend (a short against an uptrend) becomes flat."""
        trend, inputs = self._long_run.read()
        inputs = {**sig.inputs, **inputs, "trend_ma_bars": self.cfg.trend_ma_bars,
                  "trend_momentum_bars": self.cfg.trend_momentum_bars} if inputs else sig.inputs
        if sig.target is None or trend * sig.target >= 0:
            return _Signal(sig.target, sig.rule, sig.why, inputs)
        side, where = ("long", "below") if sig.target > 0 else ("short", "above")
        why = (f"{sig.why}, but the long-run trend is against a {side}: close {where} its "
               f"{self.cfg.trend_ma_bars}-bar mean {inputs['trend_mean']:.6g} and its close "
               f"{self.cfg.trend_momentum_bars} bars ago {inputs['trend_close_ago']:.6g}: flat")
        return _Signal(0, f"{sig.rule.split('.')[0]}.against_trend", why, inputs)

    def _signal(self, close: float, atr: float | None, fused: RegimeUpdate) -> _Signal:
        if fused.regime == "crisis":
            return _Signal(0, "crisis.exit", "crisis: flat at once, nothing opens")
        strategy = fused.strategy
        if strategy == "risk_off":
            return _Signal(0, "risk_off.flat", "risk_off: go flat")
        if strategy not in ("trend_long", "trend_short", "mean_reversion"):
            return _Signal(None, "none.hold", f"no strategy (regime {fused.regime}): keep")
        if self.cfg.rules == "hold":
            short = strategy == "trend_short" and self.cfg.allow_short
            return _Signal(-1 if short else 1, f"{strategy}.hold",
                           f"{strategy}: hold {'short' if short else 'long'}")
        if atr is None or not _usable(atr):
            return _Signal(None, f"{strategy}.warmup", "warming up: no ATR yet", {"atr": atr})
        if strategy == "mean_reversion":
            return self._mean_reversion(close, atr)
        return self._trend(close, atr, 1 if strategy == "trend_long" else -1)

    def _trend(self, close: float, atr: float, direction: int) -> _Signal:
        name = "trend_long" if direction > 0 else "trend_short"
        c, cfg = self._closes, self.cfg
        if len(c) < cfg.momentum_bars + 1:
            return _Signal(None, f"{name}.warmup",
                           f"warming up: {len(c)} of {cfg.momentum_bars + 1} closes")
        mom = (close - c[0]) / atr
        inputs: Inputs = {"close": close, "close_n_ago": c[0], "n": cfg.momentum_bars,
                          "atr": atr, "momentum_atr": mom, "entry_atr": cfg.trend_entry_atr,
                          "exit_atr": cfg.trend_exit_atr}
        score = mom * direction
        beyond, short_of = (">=", "<=") if direction > 0 else ("<=", ">=")
        if score >= cfg.trend_entry_atr:
            return _Signal(direction, f"{name}.enter", f"momentum {mom:+.2f} ATR {beyond} entry "
                           f"{direction * cfg.trend_entry_atr:+.2f}", inputs)
        if score <= cfg.trend_exit_atr:
            return _Signal(0, f"{name}.exit", f"momentum {mom:+.2f} ATR {short_of} exit "
                           f"{direction * cfg.trend_exit_atr:+.2f}", inputs)
        return _Signal(None, f"{name}.hold", f"momentum {mom:+.2f} ATR between exit and entry",
                       inputs)

    def _mean_reversion(self, close: float, atr: float) -> _Signal:
        w, cfg = self._means, self.cfg
        if len(w) < cfg.mean_bars:
            return _Signal(None, "mean_reversion.warmup",
                           f"warming up: {len(w)} of {cfg.mean_bars} closes")
        mean = math.fsum(w) / len(w)
        z = (close - mean) / atr
        inputs: Inputs = {"close": close, "mean": mean, "n": cfg.mean_bars, "atr": atr,
                          "distance_atr": z, "entry_atr": cfg.mr_entry_atr,
                          "exit_atr": cfg.mr_exit_atr}
        if z >= cfg.mr_entry_atr:
            return _Signal(-1, "mean_reversion.short",
                           f"price {z:+.2f} ATR above its mean (entry {cfg.mr_entry_atr})", inputs)
        if z <= -cfg.mr_entry_atr:
            return _Signal(1, "mean_reversion.long",
                           f"price {z:+.2f} ATR below its mean (entry {cfg.mr_entry_atr})", inputs)
        if abs(z) <= cfg.mr_exit_atr:
            return _Signal(0, "mean_reversion.exit",
                           f"price {z:+.2f} ATR from its mean, within exit {cfg.mr_exit_atr}",
                           inputs)
        return _Signal(None, "mean_reversion.hold", f"price {z:+.2f} ATR from its mean", inputs)

    # limits, gates, state ---------------------------------------------------------------------

    def _limit(self, wanted: int, strategy: str | None) -> tuple[int, str | None]:
        # A strategy's own range binds its ATR rules; held positions follow the regime.
        lo, hi = _RANGE.get(strategy or "", (-1, 1)) if self.cfg.rules == "signals" else (
            _RANGE["risk_off"] if strategy == "risk_off" else (-1, 1))
        if not self.cfg.allow_short and wanted < 0:
            return 0, "shorting disabled (AETHERION_DECISION_ALLOW_SHORT=false)"
        target = min(max(wanted, lo), hi)
        return target, None if target == wanted else f"{strategy} holds no {_NAME[wanted]}"

    def _gate(self, fused: RegimeUpdate) -> str | None:
        """Why a new position may not open now, or None."""
        conf = fused.confidence if math.isfinite(fused.confidence) else 0.0
        if fused.regime in ("unknown", "crisis"):
            return f"regime {fused.regime}: no new position"
        if conf < self.cfg.min_confidence:
            return f"confidence {conf:.2f} < min {self.cfg.min_confidence:.2f}: no new position"
        n = self.bars_since_action
        if n is not None and n <= self.cfg.cooldown_bars:
            return f"cooldown: {n} of {self.cfg.cooldown_bars} bars since the last action"
        return None

    def _decide(self, bar: Bar, features: Features, fused: RegimeUpdate,
                sig: _Signal) -> Decision:
        before, held = self.position, self.exposure
        wanted = before if sig.target is None else sig.target
        target, limited = self._limit(wanted, fused.strategy)
        step = (target > before) - (target < before)
        gate = self._gate(fused) if before == 0 and step != 0 else None
        if gate is not None:
            step = 0
        after = before + step
        reason = sig.why if limited is None else f"{sig.why}; {limited}"
        if after == before and wanted != before:
            reason = f"suppressed: {gate or limited}; signal: {sig.why}"
        exposure, resized = self._size(after, before, held, fused)
        if resized:
            reason = f"{reason}; {resized}"
        rule = sig.rule if limited is None or sig.target is not None else f"{fused.strategy}.limit"
        inputs: Inputs = {"close": bar.close, "atr": features.atr, **sig.inputs}
        if self.cfg.size_by_volatility:
            inputs.update(volatility=self._sizer.vol, long_run_volatility=None if
                          self._sizer.level is None else math.exp(self._sizer.level))
        if before == 0 and target != 0:  # the gates were consulted
            inputs.update(min_confidence=self.cfg.min_confidence,
                          cooldown_bars=self.cfg.cooldown_bars,
                          bars_since_action=self.bars_since_action)
        self.position, self.last_bar_time, self.exposure = after, bar.open_time, exposure
        move = (exposure > held) - (exposure < held)
        if move:
            self.last_action_time, self.bars_since_action = bar.open_time, 0
        return Decision(
            id="", market=self.market, timeframe=self.timeframe, bar_time=bar.open_time,
            action=_ACTION[move], strategy=fused.strategy, regime=fused.regime,
            confidence=fused.confidence, price=bar.close, rule=rule, inputs=inputs,
            position_before=_NAME[before], position_after=_NAME[after], exposure=exposure,
            suppressed=after == before and wanted != before, reason=reason,
            model_version=fused.model_version, created_at=_now_ms())

    def _size(self, after: int, before: int, held: float,
              fused: RegimeUpdate) -> tuple[float, str | None]:
        """The exposure after this bar and, for a resize or a refused one, why."""
        cfg = self.cfg
        size = self._sizer.size(cfg.size_step) if cfg.size_by_volatility else 1.0
        if after != before or after == 0:
            return after * size, None  # an entry or an exit takes the size of the moment
        want = after * size
        if abs(want - held) < cfg.min_change - 1e-9:
            return held, None
        if abs(want) > abs(held) and (gate := self._gate(fused)) is not None:
            return held, f"no resize to {want:+.2f}: {gate}"
        return want, f"resized {held:+.2f} -> {want:+.2f} (volatility)"
