"""The regime engine of one market: per-timeframe filters, stability, fusion, strategy.

Synchronous and free of I/O: live and replay drive it the same way. Training is asked for
(``training_due``) and handed back (``install``) so the caller decides where it runs (a worker
process live, inline in a replay); a model takes effect from the first bar of its timeframe that
closes after its ``effective_from`` (the event time it arrived at): a bar still open then is
filtered with it, a bar already closed is not. What the engine says at bar t depends only on bars
up to t, the model having been fitted on bars before.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aetherion.domain import (
    REGIMES,
    TIMEFRAME_MS,
    Features,
    ModelVersion,
    RegimeUpdate,
    Transition,
)
from aetherion.regime.config import RegimeConfig
from aetherion.regime.model import (
    BASE_INPUTS,
    INPUTS,
    FitResult,
    RegimeModel,
    TrainRequest,
    observation,
    range_informs,
)

__all__ = ["STRATEGY_OF", "RegimeEngine", "Stability"]

UNKNOWN = "unknown"
#: The active strategy of each stable regime.
STRATEGY_OF = {"bull": "trend_long", "bear": "trend_short", "sideways": "mean_reversion",
               "crisis": "risk_off"}
RETRY_BARS = 25  # bars before another try when a first fit was rejected
REFILTER_BARS = 200  # a new model's filter starts by running over this many past observations
ALL_INPUTS = tuple(INPUTS)


class Stability:
    """Accept a change of regime only when the new regime is the most probable with probability
    >= ``threshold`` for ``k`` consecutive bars."""

    def __init__(self, threshold: float, k: int) -> None:
        self.threshold, self.k = threshold, k
        self.stable = UNKNOWN
        self.candidate: str | None = None
        self.count = 0

    def step(self, probs: dict[str, float]) -> tuple[str, bool]:
        """Returns (raw regime, whether the stable regime changed)."""
        raw = max(REGIMES, key=probs.__getitem__)
        if raw != self.stable and probs[raw] >= self.threshold:
            self.count = self.count + 1 if raw == self.candidate else 1
            self.candidate = raw
            if self.count >= self.k:
                self.stable, self.candidate, self.count = raw, None, 0
                return raw, True
        else:
            self.candidate, self.count = None, 0
        return raw, False


@dataclass
class _Track:
    """One timeframe's state."""

    timeframe: str
    window: int
    stability: Stability
    history: deque[tuple[int, tuple[float | None, ...]]] = field(init=False)  # the memory
    model: RegimeModel | None = None
    version: int = 0  # active model's version (0: none)
    attempts: int = 0
    pending: tuple[RegimeModel, int, int] | None = None  # model, effective_from, version
    log_alpha: Any = None
    probs: dict[str, float] | None = None
    valid: int = 0  # valid observations seen
    since_request: int = 0
    requested: bool = False
    last_open: int | None = None  # open time of the newest bar fed
    retry_at: int = 0  # after a rejected first fit, try again once ``valid`` reaches this
    prefilter: tuple[int | None, Any] | None = None  # (last_open then, pending's log alpha)
    ms: int = field(init=False)  # the timeframe's length

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.window)
        self.ms = TIMEFRAME_MS[self.timeframe]


class RegimeEngine:
    def __init__(self, market: str, timeframes: Sequence[str],
                 cfg: RegimeConfig | None = None) -> None:
        self.market = market
        self.cfg = cfg = cfg or RegimeConfig()
        self.timeframes = tuple(timeframes)
        self.finest_ms = TIMEFRAME_MS[self.timeframes[0]]
        self.tracks = {
            tf: _Track(tf, cfg.memory, Stability(cfg.threshold, cfg.k))
            for tf in self.timeframes
        }
        self.fused = Stability(cfg.threshold, cfg.k)
        self.strategy: str | None = None
        self.last_fused: RegimeUpdate | None = None
        self._due: list[_Track] = []

    # ---- per timeframe ----------------------------------------------------------------------

    def on_features(self, f: Features, schedule: bool = True) -> RegimeUpdate | None:
        """One closed bar's features; the timeframe's filtered regime (None without a model or
        while its inputs warm up). ``schedule`` False (history warm-up) asks for no training."""
        t = self.tracks[f.timeframe]
        if t.pending is not None and f.open_time + t.ms > t.pending[1]:
            self._activate(t, *t.pending)
        x = observation(f, ALL_INPUTS)  # None without a usable return
        t.history.append((f.open_time, x or (None,) * len(ALL_INPUTS)))
        t.last_open = f.open_time
        if x is not None:
            t.valid += 1
            t.since_request += 1
            if schedule:
                self._maybe_request(t)
        if t.model is None or x is None:
            return None
        # a model's inputs are ALL_INPUTS or their first (see ``_request``)
        t.log_alpha = t.model.filter_step(t.log_alpha,
                                          t.model.standardize(x[:len(t.model.inputs)]))
        probs = t.model.regime_probs(t.log_alpha)
        t.probs = probs
        t.stability.step(probs)
        return self.current(f.timeframe)

    def current(self, timeframe: str) -> RegimeUpdate | None:
        """The timeframe's regime at its newest bar (None without a model)."""
        t = self.tracks[timeframe]
        if t.probs is None or t.last_open is None:
            return None
        probs, stable = t.probs, t.stability.stable
        raw = max(REGIMES, key=probs.__getitem__)
        return RegimeUpdate(self.market, timeframe, t.last_open, raw, stable,
                            probs.get(stable, 0.0), probs[raw], probs, t.version,
                            STRATEGY_OF.get(stable))

    def end_warm_up(self) -> None:
        """After history warm-up: ask for a first model where there is none."""
        for t in self.tracks.values():
            self._maybe_request(t)

    def _maybe_request(self, t: _Track) -> None:
        if t.requested:
            return
        first = (t.model is None and t.pending is None and t.valid >= self.cfg.min_bars
                 and t.valid >= t.retry_at)
        again = t.model is not None and t.since_request >= self.cfg.retrain_bars
        if first or again:  # the request is built in ``training_due``, off the close path
            self._due.append(t)
            t.requested = True
            t.since_request = 0

    def _request(self, t: _Track) -> TrainRequest | None:
        rows = [(ot, v) for ot, v in t.history if v[0] is not None]  # 0: log_return
        if not rows:
            return None
        s = self.cfg
        # The bar volatility is an input only where bars have one that tells more than the
        # return (see ``range_informs``)
        inputs = ALL_INPUTS if range_informs([v for _, v in rows[-s.window:]]) else BASE_INPUTS
        obs = [v[:len(inputs)] for _, v in rows]
        return TrainRequest(self.market, t.timeframe, obs, inputs, rows[0][0], rows[-1][0],
                            s.seed, s.restarts, s.n_iter, s.window,
                            s.stay_bars, s.stay_weight, s.crisis_ratio, s.tail_nu, s.temper_floor)

    def training_due(self) -> list[TrainRequest]:
        """Requests for every timeframe due a fit (asked after the close's decision)."""
        due, self._due = self._due, []
        out = []
        for t in due:
            req = self._request(t)
            if req is None:
                t.requested = False
            else:
                out.append(req)
        return out

    def install(self, result: FitResult, effective_from: int) -> ModelVersion:
        """Hand back a fit; an accepted model takes effect from ``effective_from``."""
        req = result.request
        t = self.tracks[req.timeframe]
        t.requested = False
        t.attempts = max(t.attempts, t.version) + 1
        version = t.attempts
        if result.ok:
            model = RegimeModel(result.params)
            t.pending = (model, effective_from, version)
            nxt = None if t.last_open is None else t.last_open + t.ms
            if t.model is None and (nxt is None or nxt + t.ms > effective_from):
                # The next bar of this timeframe is the first it applies to: taking over now
                # changes no output, and the regime is known at once instead of at that bar.
                self._activate(t, *t.pending)
            else:  # run its filter over the recent past now, not in the next bar's close
                t.prefilter = (t.last_open, self._refilter(t, model, first=False))
        else:
            t.retry_at = t.valid + RETRY_BARS
        return ModelVersion(
            self.market, req.timeframe, version, effective_from, time.time_ns() // 1_000_000,
            req.train_start, req.train_end, len(req.obs), result.loglik, result.params,
            "active" if result.ok else "rejected", result.reason,
        )

    def restore(self, timeframe: str, params: dict[str, Any], version: int) -> bool:
        """Reuse a stored model (a restart): in force from the next bar. False for a model
        of other inputs (stored by an earlier version of the model): a new one is trained."""
        t = self.tracks[timeframe]
        t.attempts = max(t.attempts, version)
        inputs = tuple(params.get("inputs", ()))
        if inputs not in (ALL_INPUTS, BASE_INPUTS):
            return False
        t.pending = (RegimeModel(params), 0, version)
        t.since_request = 0
        return True

    def skip_versions(self, timeframe: str, highest: int) -> None:
        """Versions up to ``highest`` are taken (a restart: stored, rejected ones included), so
        the next fit numbers on from there and a version never repeats."""
        t = self.tracks[timeframe]
        t.attempts = max(t.attempts, highest)

    def _activate(self, t: _Track, model: RegimeModel, _: int, version: int) -> None:
        first = t.model is None
        t.model, t.version, t.pending = model, version, None
        ready, t.prefilter = t.prefilter, None
        if not first and ready is not None and ready[0] == t.last_open:
            t.log_alpha = ready[1]  # no bar came in since it was computed at install
        else:
            t.log_alpha = self._refilter(t, model, first)

    def _refilter(self, t: _Track, model: RegimeModel, first: bool) -> Any:
        """A new model's filter starts from the recent past, not cold; a first model also runs
        the stability rule over those bars, so the regime it finds held."""
        log_alpha = None
        for _, vals in list(t.history)[-REFILTER_BARS:]:
            if vals[0] is not None:
                log_alpha = model.filter_step(log_alpha,
                                              model.standardize(vals[:len(model.inputs)]))
                if first:
                    t.probs = model.regime_probs(log_alpha)
                    t.stability.step(t.probs)
        return log_alpha

    # ---- fused ------------------------------------------------------------------------------

    def fuse(self, close_time: int) -> tuple[RegimeUpdate, Transition | None]:
        """The market's regime after every timeframe closing at ``close_time`` was fed."""
        total = 0.0
        acc = dict.fromkeys(REGIMES, 0.0)
        contributions: dict[str, dict[str, float]] = {}
        for tf, t in self.tracks.items():
            w = self.cfg.weight(tf, self.timeframes)
            if t.probs is None or w <= 0:
                continue
            for r in REGIMES:
                acc[r] += w * t.probs[r]
            total += w
            contributions[tf] = {"weight": w, "version": float(t.version),
                                 **{r: t.probs[r] for r in REGIMES}}
        open_time = close_time - self.finest_ms
        finest = self.tracks[self.timeframes[0]]
        if not total:
            upd = RegimeUpdate(self.market, "fused", open_time, UNKNOWN, UNKNOWN, 0.0, 0.0,
                               dict.fromkeys(REGIMES, 0.0), None, None, {})
            self.last_fused = upd
            return upd, None
        probs = {r: acc[r] / total for r in REGIMES}
        for c in contributions.values():
            c["weight"] /= total
        before = self.fused.stable
        raw, changed = self.fused.step(probs)
        held = {t.stability.stable for t in self.tracks.values() if t.probs is not None}
        if before == UNKNOWN and not changed and held == {raw} \
                and probs[raw] >= self.cfg.threshold:
            # Leaving "unknown": every timeframe's own stability rule already holds this regime.
            self.fused.stable, self.fused.candidate, self.fused.count = raw, None, 0
            changed = True
        stable = self.fused.stable
        strategy = STRATEGY_OF.get(stable)
        upd = RegimeUpdate(self.market, "fused", open_time, raw, stable, probs.get(stable, 0.0),
                           probs[raw], probs, finest.version or None, strategy, contributions)
        self.last_fused = upd
        transition = None
        if changed:
            parts = ", ".join(f"{tf} {_top(c)} {c[_top(c)]:.2f}"
                              for tf, c in contributions.items())
            cause = (f"{stable} held p>={self.cfg.threshold} for {self.cfg.k} bars "
                     f"(p={probs[stable]:.2f}; {parts})")
            transition = Transition(self.market, "fused", open_time, before, stable,
                                    probs[stable], self.strategy, strategy, cause[:255])
            self.strategy = strategy
        return upd, transition


def _top(probs: dict[str, float]) -> str:
    return max(REGIMES, key=probs.__getitem__)
