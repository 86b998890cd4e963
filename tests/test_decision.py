"""The decision policy: each strategy's rule, limits, gates, cooldown, duplicates, properties."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import random
import zipfile

import pytest
from datadir import DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from aetherion.config import Settings
from aetherion.decision import (
    Decision,
    DecisionConfig,
    DecisionPolicy,
    PolicyState,
    Position,
    decision_id,
    default_timeframe,
)
from aetherion.domain import Bar, Features, RegimeUpdate
from aetherion.features.engine import FeatureEngine

MIN = 60_000
STRATEGY_OF = {"bull": "trend_long", "bear": "trend_short", "sideways": "mean_reversion",
               "crisis": "risk_off", "unknown": None}
LEVEL = {"short": -1, "flat": 0, "long": 1}
EXITS: tuple[tuple[Position, str], ...] = (("long", "SELL"), ("short", "BUY"))


def make_bar(i: int, close: float, tf: str = "1m", revision: int = 0) -> Bar:
    return Bar("spy", tf, i * MIN, close, close, close, close, 10.0, 6.0, 4.0, 3, True,
               revision=revision)


def fused(i: int, regime: str, conf: float, strategy: str | None) -> RegimeUpdate:
    return RegimeUpdate("spy", "fused", i * MIN, regime, regime, conf, conf, {}, 3, strategy)


class Feed:
    """One market's policy fed bar after bar (one minute apart)."""

    def __init__(self, restored: PolicyState | None = None, **cfg: object) -> None:
        base: dict[str, object] = {"momentum_bars": 1, "mean_bars": 2, "cooldown_bars": 0,
                                   "min_confidence": 0.5, "rules": "signals",
                                   "allow_short": True, "size_by_volatility": False}
        self.cfg = DecisionConfig.model_validate({**base, **cfg}).resolved(["1m", "5m"])
        self.policy = DecisionPolicy("spy", self.cfg, restored)
        self.i = 0 if restored is None or restored.last_bar_time is None else (
            restored.last_bar_time // MIN + 1)

    def step(self, close: float, regime: str = "bull", conf: float = 0.9,
             strategy: str | None | bool = True, atr: float | None = 1.0) -> Decision:
        d = self.again(self.i, close, regime, conf, strategy, atr)
        assert d is not None
        self.i += 1
        return d

    def again(self, i: int, close: float, regime: str = "bull", conf: float = 0.9,
              strategy: str | None | bool = True, atr: float | None = 1.0) -> Decision | None:
        strat = STRATEGY_OF[regime] if strategy is True else strategy or None
        b = make_bar(i, close)
        f = Features("spy", "1m", b.open_time, close, atr=atr)
        return self.policy.on_bar(b, f, fused(i, regime, conf, strat))

    def run(self, closes: list[float], **kw: object) -> list[str]:
        """``action:position`` after each of ``closes``."""
        out = []
        for c in closes:
            d = self.step(c, **kw)  # type: ignore[arg-type]
            out.append(f"{d.action}:{d.position_after}")
        return out


# ---- strategies -----------------------------------------------------------------------------

def test_trend_long_enters_beyond_threshold_and_exits_on_reversal() -> None:
    f = Feed()
    d0 = f.step(100.0)
    assert (d0.action, d0.rule) == ("HOLD", "trend_long.warmup")
    # momentum (1 bar, ATR 1): +1.0 (< 1.5: hold), +2.0 (enter), +1 (hold), -0.5 (exit)
    assert f.run([101.0, 103.0, 104.0, 103.5, 100.0]) == [
        "HOLD:flat", "BUY:long", "HOLD:long", "SELL:flat", "HOLD:flat"]
    d = f.step(102.0)
    assert d.rule == "trend_long.enter" and d.action == "BUY"
    assert d.inputs["momentum_atr"] == pytest.approx(2.0)
    assert d.inputs["close_n_ago"] == 100.0 and d.inputs["entry_atr"] == 1.5
    assert d.strategy == "trend_long" and d.regime == "bull" and d.model_version == 3
    # a fall never makes trend_long short
    assert f.run([90.0, 80.0, 70.0]) == ["SELL:flat", "HOLD:flat", "HOLD:flat"]


def test_trend_long_scales_momentum_by_atr() -> None:
    f = Feed()
    f.step(100.0, atr=2.0)
    assert f.step(102.0, atr=2.0).action == "HOLD"  # +2 = +1.0 ATR
    assert f.step(105.0, atr=2.0).action == "BUY"  # +3 = +1.5 ATR


def test_trend_short_mirrors_and_never_goes_long() -> None:
    f = Feed(momentum_bars=2)
    f.run([100.0, 100.0], regime="bear")
    assert f.run([98.0, 97.0, 97.5, 99.0, 110.0, 120.0], regime="bear") == [
        "SELL:short", "HOLD:short", "HOLD:short", "BUY:flat", "HOLD:flat", "HOLD:flat"]


def test_trend_long_closes_a_short_it_finds() -> None:
    f = Feed(restored=PolicyState("short", 0, 0, 10))
    d = f.step(100.0)  # still warming up, but trend_long holds no short
    assert (d.action, d.rule, d.position_before, d.position_after) == (
        "BUY", "trend_long.limit", "short", "flat")
    assert "holds no short" in (d.reason or "")


def test_mean_reversion_trades_distance_from_mean_both_ways() -> None:
    f = Feed(mean_bars=4, mr_entry_atr=1.5, mr_exit_atr=0.25)
    f.run([100.0] * 3, regime="sideways")
    d = f.step(102.0, regime="sideways")  # mean 100.5: +1.5 ATR
    assert (d.action, d.rule, d.position_after) == ("SELL", "mean_reversion.short", "short")
    assert d.inputs["mean"] == pytest.approx(100.5)
    assert d.inputs["distance_atr"] == pytest.approx(1.5)
    # mean of (100, 100, 102, 101) = 100.75: +0.25 ATR → exit
    assert f.run([101.0], regime="sideways") == ["BUY:flat"]
    # mean of (100, 102, 101, 98) = 100.25: -2.25 ATR → long
    assert f.run([98.0], regime="sideways") == ["BUY:long"]
    # mean of (102, 101, 98, 99.5) = 100.125: -0.625 ATR → keep
    d = f.step(99.5, regime="sideways")
    assert (d.action, d.rule) == ("HOLD", "mean_reversion.hold")


def test_mean_reversion_reverses_one_step_at_a_time() -> None:
    f = Feed(mean_bars=2)
    f.step(100.0, regime="sideways")
    assert f.run([97.0, 110.0, 125.0], regime="sideways") == [
        "BUY:long", "SELL:flat", "SELL:short"]


def test_risk_off_goes_flat_from_either_side() -> None:
    for pos, action in EXITS:
        f = Feed(restored=PolicyState(pos, 0, 0, 0), cooldown_bars=5)
        d = f.step(100.0, regime="bull", strategy="risk_off")
        assert (d.action, d.position_after, d.rule) == (action, "flat", "risk_off.flat")
        d = f.step(100.0, regime="bull", strategy="risk_off")
        assert (d.action, d.suppressed) == ("HOLD", False)


# ---- gates ----------------------------------------------------------------------------------

def test_below_min_confidence_nothing_opens_but_exits_go() -> None:
    f = Feed(min_confidence=0.7)
    f.step(100.0, conf=0.69)
    d = f.step(103.0, conf=0.69)
    assert (d.action, d.suppressed, d.position_after) == ("HOLD", True, "flat")
    assert d.reason is not None and "confidence 0.69 < min 0.70" in d.reason
    assert d.rule == "trend_long.enter" and d.inputs["min_confidence"] == 0.7
    assert f.step(106.0, conf=0.7).action == "BUY"
    d = f.step(100.0, conf=0.01)  # exit at any confidence
    assert (d.action, d.position_after, d.suppressed) == ("SELL", "flat", False)


def test_unknown_regime_opens_nothing() -> None:
    f = Feed()
    f.step(100.0, regime="unknown")
    d = f.step(110.0, regime="unknown")
    assert (d.action, d.rule, d.suppressed) == ("HOLD", "none.hold", False)
    # a strategy beside an unknown regime (a fused model not yet agreed) still may not open
    d = f.step(120.0, regime="unknown", strategy="trend_long", conf=1.0)
    assert (d.action, d.suppressed) == ("HOLD", True)
    assert "regime unknown" in (d.reason or "")
    # ... but exits: a long restored from the store leaves on the exit signal
    g = Feed(restored=PolicyState("long", 0, 0, 0), cooldown_bars=3)
    g.step(100.0, regime="unknown", strategy="trend_long")
    d = g.step(99.0, regime="unknown", strategy="trend_long", conf=0.0)
    assert (d.action, d.position_after) == ("SELL", "flat")


def test_crisis_exits_at_once_and_never_opens() -> None:
    for pos, action in EXITS:
        # inside a cooldown, at zero confidence, with a trend signal the other way: still exits
        f = Feed(restored=PolicyState(pos, 0, 0, 0), cooldown_bars=10)
        d = f.step(100.0, regime="crisis", conf=0.0, strategy="trend_long")
        assert (d.action, d.position_after, d.rule) == (action, "flat", "crisis.exit")
    f = Feed(cooldown_bars=0)
    f.step(100.0, regime="crisis")
    for c in (110.0, 130.0, 90.0, 50.0):
        for strat in ("trend_long", "trend_short", "mean_reversion", None):
            e = f.again(f.i, c, regime="crisis", conf=1.0, strategy=strat)
            assert e is not None and (e.action, e.position_after) == ("HOLD", "flat")
            f.policy.last_bar_time = None  # let the same bar be decided again under another
        f.i += 1


def test_cooldown_holds_opens_back_never_exits() -> None:
    f = Feed(cooldown_bars=2)
    f.step(100.0)
    assert f.run([102.0, 101.0]) == ["BUY:long", "SELL:flat"]  # the exit is not delayed
    d = f.step(103.0)
    assert (d.action, d.suppressed) == ("HOLD", True)
    assert d.reason is not None and d.reason.startswith("suppressed: cooldown: 1 of 2 bars")
    assert d.inputs["bars_since_action"] == 1
    assert f.policy.cooldown_left == 1
    assert f.run([105.0, 107.0]) == ["HOLD:flat", "BUY:long"]


def test_cooldown_blocks_the_second_half_of_a_reversal() -> None:
    f = Feed(mean_bars=2, cooldown_bars=1)
    f.step(100.0, regime="sideways")
    assert f.run([97.0], regime="sideways") == ["BUY:long"]
    assert f.run([96.0], regime="sideways") == ["HOLD:long"]  # a bar passes: cooldown over
    # far above the mean: exit at once, then the short waits out the cooldown
    assert f.run([110.0, 125.0, 140.0], regime="sideways") == [
        "SELL:flat", "HOLD:flat", "SELL:short"]


def test_allow_short_false_sell_only_exits_longs() -> None:
    f = Feed(mean_bars=2, allow_short=False)
    f.step(100.0, regime="sideways")
    d = f.step(110.0, regime="sideways")
    assert (d.action, d.suppressed, d.position_after) == ("HOLD", True, "flat")
    assert "shorting disabled" in (d.reason or "")
    assert f.run([100.0, 120.0, 140.0], regime="sideways") == [
        "BUY:long", "SELL:flat", "HOLD:flat"]
    g = Feed(allow_short=False)
    g.step(100.0, regime="bear")
    assert g.run([90.0, 80.0], regime="bear") == ["HOLD:flat", "HOLD:flat"]
    h = Feed(restored=PolicyState("short", 0, 0, 0), allow_short=False)
    assert h.step(100.0, regime="bear").position_after == "flat"  # a short left from before


# ---- duplicates and restart -----------------------------------------------------------------

def test_same_bar_twice_older_bar_and_revision_give_nothing() -> None:
    f = Feed()
    f.run([100.0, 103.0])
    before = f.policy.state()
    assert before.position == "long"
    assert f.again(1, 103.0) is None  # re-delivered
    assert f.again(0, 50.0, regime="crisis") is None  # older
    b = make_bar(1, 50.0, revision=1)  # revised
    assert f.policy.on_bar(b, Features("spy", "1m", b.open_time, 50.0, atr=1.0),
                           fused(1, "crisis", 1.0, "risk_off")) is None
    assert f.policy.state() == before


def test_restart_restores_position_cooldown_and_skips_decided_bars() -> None:
    f = Feed(cooldown_bars=3)
    f.run([100.0, 103.0, 103.5])  # BUY at bar 1, hold at bar 2
    st_ = f.policy.state()
    assert st_ == PolicyState("long", 2 * MIN, 1 * MIN, 1, exposure=1.0)
    g = Feed(restored=st_, cooldown_bars=3)
    for i, c in enumerate([100.0, 103.0, 103.5]):  # the connector re-delivers after restart
        assert g.again(i, c) is None
    # the re-delivered bars warmed the price window: momentum works at once
    assert g.run([99.0, 105.0]) == ["SELL:flat", "HOLD:flat"]  # exit; then cooldown
    assert g.policy.state().bars_since_action == 1


def test_exposure_is_the_position_level_and_part_of_the_state() -> None:
    f = Feed(mean_bars=2)
    assert f.step(100.0, regime="sideways").exposure == 0.0
    ds = [f.step(c, regime="sideways") for c in (97.0, 110.0, 125.0)]
    assert [(d.position_after, d.exposure) for d in ds] == [
        ("long", 1.0), ("flat", 0.0), ("short", -1.0)]
    assert f.policy.state().exposure == -1.0
    g = Feed(restored=PolicyState("long", 0, 0, 5, exposure=1.0))
    assert g.policy.state().exposure == 1.0  # restored before any decision
    d = g.step(101.0)
    assert (d.position_after, d.exposure) == ("long", 1.0)
    for bad in (1.5, -1.01, math.nan, math.inf):
        with pytest.raises(ValidationError, match="exposure"):
            Decision.model_validate({**d.model_dump(), "exposure": bad})
        with pytest.raises(ValueError, match="exposure"):
            PolicyState("long", exposure=bad)


def test_observe_warms_windows_without_deciding() -> None:
    f = Feed(momentum_bars=3)
    for i, c in enumerate([100.0, 101.0, 102.0]):
        f.policy.observe(make_bar(i, c))
    f.i = 3
    d = f.step(104.0)
    assert (d.action, d.inputs["close_n_ago"]) == ("BUY", 100.0)
    assert f.policy.state().last_bar_time == 3 * MIN


def test_bad_bars() -> None:
    f = Feed()
    with pytest.raises(ValueError, match="decides on 1m"):
        f.policy.on_bar(make_bar(0, 1.0, tf="5m"), Features("spy", "5m", 0, 1.0),
                        fused(0, "bull", 1.0, "trend_long"))
    assert f.again(0, math.nan) is None and f.policy.rejected == 1
    assert f.again(0, -1.0) is None and f.policy.rejected == 2
    d = f.step(100.0, atr=math.nan)  # an unusable ATR: warm-up, not a crash
    assert d.rule == "trend_long.warmup" and d.inputs["atr"] is None


# ---- model and config -----------------------------------------------------------------------

def test_decision_id_is_deterministic_and_checked() -> None:
    f = Feed()
    d = f.step(100.0)
    assert d.id == decision_id("spy", "1m", 0) == "spy:1m:0"
    assert Decision.model_validate(d.model_dump()) == d
    with pytest.raises(ValidationError, match="does not match"):
        Decision.model_validate({**d.model_dump(), "id": "spy:1m:1"})
    long_reason = Decision.model_validate({**d.model_dump(), "reason": "x" * 400,
                                           "inputs": {"a": math.inf}})
    assert long_reason.reason is not None and len(long_reason.reason) == 255
    assert long_reason.inputs == {"a": None}
    assert d.model_dump(mode="json")["position_after"] == "flat"


def test_config_defaults_and_validation() -> None:
    assert default_timeframe(["1s", "5s"]) == "5s"
    assert default_timeframe(["1h", "1s", "5m", "1m"]) == "1m"
    assert default_timeframe(["15m", "1h"]) == "15m"
    c = Settings(timeframes=("5s", "5m", "1h")).decision_config()
    assert (c.timeframe, c.min_confidence, c.cooldown_bars, c.allow_short) == ("5m", 0.6, 5, False)
    assert (c.rules, c.size_by_volatility, c.size_step, c.min_change) == ("hold", True, 0.25, 0.5)
    c = Settings(timeframes=("1m", "5m"), decision_timeframe="5m",  # type: ignore[call-arg]
                 decision_allow_short=True, decision_min_confidence=0.8).decision_config()
    assert (c.timeframe, c.allow_short, c.min_confidence) == ("5m", True, 0.8)
    assert DecisionConfig(timeframe="").resolved(["1s", "1h"]).timeframe == "1h"
    with pytest.raises(ValueError, match="not among the configured"):
        DecisionConfig(timeframe="1h").resolved(["1m"])
    for bad in ({"min_confidence": 1.5}, {"trend_exit_atr": 2.0}, {"mr_exit_atr": 1.5},
                {"timeframe": "2m"}, {"cooldown_bars": -1}, {"momentum_bars": 0}):
        with pytest.raises(ValidationError):
            DecisionConfig.model_validate(bad)
    with pytest.raises(ValueError, match="resolved"):
        DecisionPolicy("spy", DecisionConfig())


# ---- properties -----------------------------------------------------------------------------

# Mostly tradeable regimes at high confidence (so positions open and the cooldown is reached),
# with crises, unknown regimes, low confidence, odd strategies and missing ATRs mixed in.
_regimes = st.sampled_from(["bull", "bull", "bear", "sideways", "sideways", "crisis", "unknown"])
_strats = st.sampled_from(["trend_long", "trend_short", "mean_reversion", "risk_off", None])
_events = st.lists(st.tuples(
    st.floats(-4.0, 4.0), st.one_of(st.just(1.0), st.just(1.0), st.none(), st.floats(0.2, 3.0)),
    _regimes, st.one_of(st.just(0.95), st.floats(0.0, 1.0)),
    st.one_of(st.just(True), st.just(True), _strats), st.booleans()),
    min_size=1, max_size=80)


def check_step(d: Decision, before: str, fz: RegimeUpdate, cfg: DecisionConfig,
               since_action: int | None, held: float) -> None:
    """The invariants one decision must satisfy (``held``: the exposure before it)."""
    b, a = LEVEL[d.position_before], LEVEL[d.position_after]
    assert d.position_before == before and abs(a - b) <= 1
    move = (d.exposure > held) - (d.exposure < held)
    assert move == {"BUY": 1, "SELL": -1, "HOLD": 0}[d.action]
    assert (d.exposure > 0) - (d.exposure < 0) == a  # the exposure's sign is the position
    gated = fz.regime in ("crisis", "unknown") or fz.confidence < cfg.min_confidence
    if gated:
        assert abs(d.exposure) <= abs(held)  # never grows
    if fz.regime == "crisis" or fz.strategy == "risk_off":
        assert a == 0 and d.exposure == 0
    if abs(d.exposure) > abs(held) or (b == 0 and a != 0):  # opened or grew
        assert since_action is None or since_action > cfg.cooldown_bars
    if not cfg.allow_short:
        assert a >= 0 or b < 0
    if cfg.rules == "signals" and fz.strategy == "trend_long" and b >= 0:
        assert a >= 0
    if cfg.rules == "signals" and fz.strategy == "trend_short" and b <= 0:
        assert a <= 0
    if cfg.size_by_volatility:
        steps = abs(d.exposure) / cfg.size_step
        assert abs(steps - round(steps)) < 1e-9
    if d.suppressed:
        assert d.action == "HOLD" and d.reason and d.reason.startswith("suppressed")


@settings(max_examples=300, deadline=None)
@given(events=_events, cooldown=st.integers(0, 4), n=st.integers(1, 5), m=st.integers(2, 5),
       allow_short=st.booleans(), min_conf=st.floats(0.0, 1.0),
       rules=st.sampled_from(["hold", "signals"]), sized=st.booleans())
def test_position_invariants_over_random_streams(
        events: list[tuple[float, float | None, str, float, object, bool]], cooldown: int,
        n: int, m: int, allow_short: bool, min_conf: float, rules: str, sized: bool) -> None:
    f = Feed(cooldown_bars=cooldown, momentum_bars=n, mean_bars=m, allow_short=allow_short,
             min_confidence=min_conf, rules=rules, size_by_volatility=sized, vol_bars=3,
             vol_halflife_bars=5)
    close, position, since, held = 100.0, "flat", None, 0.0
    decided = 0
    for move, atr, regime, conf, strat, redeliver in events:
        if redeliver and f.i > 0:  # the previous bar again: never a second decision
            assert f.again(f.i - 1, close, regime, conf, strat, atr) is None  # type: ignore[arg-type]
        close = max(1.0, close + move)
        strategy = STRATEGY_OF[regime] if strat is True else strat
        fz = fused(f.i, regime, conf, strategy)  # type: ignore[arg-type]
        d = f.step(close, regime, conf, strategy, atr)  # type: ignore[arg-type]
        decided += 1
        check_step(d, position, fz, f.cfg, None if since is None else since + 1, held)
        position, held = d.position_after, d.exposure
        since = 0 if d.action != "HOLD" else (None if since is None else since + 1)
        assert f.policy.state().position == position
    assert f.policy.state().last_bar_time == (decided - 1) * MIN


# ---- real data ------------------------------------------------------------------------------

def spy_daily() -> list[Bar]:
    with zipfile.ZipFile(DATA / "us_equities" / "daily_spy.zip") as z:
        rows = list(csv.reader(io.TextIOWrapper(z.open("spy.csv"))))
    out = []
    for r in rows:
        day = r[0].split()[0]
        t = int(day[:4]), int(day[4:6]), int(day[6:])
        ms = int(dt.datetime(*t, tzinfo=dt.UTC).timestamp() * 1000)
        o, h, lo, c = (float(x) / 10_000 for x in r[1:5])
        out.append(Bar("spy", "1d", ms, o, h, lo, c, float(r[5]), 0.0, 0.0, 1, True,
                       sided=False))
    return out


def test_real_spy_daily_trend_policy_under_a_volatility_crisis_gate() -> None:
    """SPY 1998-2021 daily: trend_long, with 'crisis' while the annualized 21-day volatility
    is above 40% (a plain stand-in for the regime model). The policy must be flat through the
    2008 and 2020 crashes and hold every invariant on real prices."""
    bars = spy_daily()
    cfg = DecisionConfig(timeframe="1d", momentum_bars=20, cooldown_bars=5, rules="signals",
                         allow_short=True, size_by_volatility=False)
    policy, feats = DecisionPolicy("spy", cfg), FeatureEngine("spy", "1d", vol_window=21)
    position, since, by_day, held = "flat", None, {}, 0.0
    for b in bars:
        f = feats.on_bar(b)
        vol = (f.volatility or 0.0) * math.sqrt(252)
        regime = "crisis" if vol > 0.40 else "bull"
        fz = RegimeUpdate("spy", "fused", b.open_time, regime, regime, 0.9, 0.9, {}, 1,
                          STRATEGY_OF[regime])
        d = policy.on_bar(b, f, fz)
        assert d is not None
        check_step(d, position, fz, cfg, None if since is None else since + 1, held)
        position, held = d.position_after, d.exposure
        since = 0 if d.action != "HOLD" else (None if since is None else since + 1)
        by_day[d.bar_time] = d

    def on(day: str) -> Decision:
        return by_day[int(dt.datetime.strptime(day, "%Y-%m-%d").replace(
            tzinfo=dt.UTC).timestamp() * 1000)]

    assert on("2008-11-06").position_after == "flat" and on("2008-11-06").regime == "crisis"
    assert on("2020-03-23").position_after == "flat"
    actions = [d.action for d in by_day.values()]
    buys, sells = actions.count("BUY"), actions.count("SELL")
    assert 20 < buys < 400 and abs(buys - sells) <= 1
    # a replay of a prefix decides exactly what the whole run decided for it
    p2, fe2 = DecisionPolicy("spy", cfg), FeatureEngine("spy", "1d", vol_window=21)
    for b in bars[:3000]:
        f = fe2.on_bar(b)
        d0 = by_day[b.open_time]
        fz = RegimeUpdate("spy", "fused", b.open_time, d0.regime, d0.regime, 0.9, 0.9, {}, 1,
                          d0.strategy)
        d = p2.on_bar(b, f, fz)
        assert d is not None
        assert d.model_dump(exclude={"created_at"}) == d0.model_dump(exclude={"created_at"})


# ---- the default: hold, sized by volatility ----------------------------------------------------

def sized_feed(**cfg: object) -> Feed:
    return Feed(rules="hold", allow_short=False, size_by_volatility=True, vol_bars=20,
                vol_halflife_bars=200, **cfg)


def walk(rng: random.Random, close: float, vol: float, n: int) -> list[float]:
    out = []
    for _ in range(n):
        close *= math.exp(rng.gauss(0.0, vol))
        out.append(close)
    return out


def test_default_holds_long_sizes_down_when_volatility_rises_and_is_flat_in_crisis() -> None:
    rng = random.Random(3)
    f = sized_feed(trend_filter=False)  # sizing alone (the trend filter: the next test)
    calm = walk(rng, 100.0, 0.01, 300)
    ds = [f.step(c, "bull") for c in calm]
    assert ds[0].action == "BUY" and ds[0].rule == "trend_long.hold" and ds[0].exposure == 1.0
    assert all(d.exposure == 1.0 for d in ds[-50:])  # calm: the long-run level, full size
    wild = walk(rng, calm[-1], 0.04, 60)  # 4x the volatility: a quarter, held at a half
    ds = [f.step(c, "sideways") for c in wild]
    assert ds[-1].exposure == 0.5 and ds[-1].position_after == "long"  # 0.25 is too small a move
    resized = [d for d in ds if d.action == "SELL"]
    assert resized and all("resized" in (d.reason or "") for d in resized)
    assert all(abs(d.exposure - p.exposure) >= 0.5 for p, d in zip(ds, ds[1:], strict=False)
               if d.action != "HOLD")  # a resize moves half the capital or more
    d = f.step(wild[-1], "crisis", strategy="risk_off")
    assert (d.action, d.exposure, d.rule) == ("SELL", 0.0, "crisis.exit")
    d = f.step(wild[-1], "bear")  # bear with shorts off: the long book holds through it
    assert d.action == "BUY" and d.rule == "trend_short.hold" and 0 < d.exposure <= 0.5
    assert "volatility" in d.inputs and "long_run_volatility" in d.inputs


def test_size_falls_with_the_variance_by_default_and_with_the_volatility_at_power_one() -> None:
    rng = random.Random(5)
    calm = walk(rng, 100.0, 0.01, 300)
    prices = calm + walk(rng, calm[-1], 0.02, 40)  # then twice as volatile
    sizes = {}
    for power in (1.0, 2.0):
        f = sized_feed(trend_filter=False, vol_power=power, min_change=0.0)  # the size itself
        last = [f.step(c, "bull") for c in prices][-1]
        long_run, recent = last.inputs["long_run_volatility"], last.inputs["volatility"]
        assert isinstance(long_run, float) and isinstance(recent, float)
        ratio = long_run / recent
        assert 0.4 < ratio < 0.6
        assert last.exposure == max(0.25, round(ratio**power * 4) / 4)
        sizes[power] = last.exposure
    assert sizes == {1.0: 0.5, 2.0: 0.25}  # about 1/2 and its square, in quarters


def test_the_trend_filter_holds_no_long_against_a_long_run_downtrend() -> None:
    """Long only while the close is above its 20-bar mean or its close 30 bars ago; below both
    the long goes flat at once (an exit: no gate), and comes back once either says up, through
    the gates. Before 31 closes the filter cannot read the trend and holds nothing back."""
    f = Feed(rules="hold", allow_short=False, trend_filter=True, trend_ma_bars=20,
             trend_momentum_bars=30, cooldown_bars=3)
    ds = [f.step(100.0 - i * 0.5) for i in range(31)]  # falling, but too few closes to tell
    assert ds[0].action == "BUY" and all(d.position_after == "long" for d in ds[:30])
    d = ds[30]  # the 31st close: below its mean and below the close 30 bars ago
    assert (d.action, d.position_after, d.rule) == ("SELL", "flat", "trend_long.against_trend")
    assert "20-bar mean" in (d.reason or "") and d.inputs["trend_close_ago"] == 100.0
    assert d.inputs["trend_mean"] == pytest.approx(sum(100.0 - i * 0.5 for i in range(11, 31))
                                                   / 20)
    ds = [f.step(c) for c in (84.0, 84.5, 85.0, 85.5, 86.0, 95.0)]
    assert all(x.position_after == "flat" for x in ds[:5])  # below both: stays out
    assert (ds[5].action, ds[5].rule) == ("BUY", "trend_long.hold")  # above its mean again
    assert ds[5].inputs["trend_mean"] < 95.0
    d = f.step(80.0, "crisis", strategy="risk_off")
    assert (d.action, d.rule) == ("SELL", "crisis.exit")
    d = f.step(80.0)  # against the trend now, and in the cooldown: stays out, not suppressed
    assert d.position_after == "flat" and d.rule == "trend_long.against_trend"
    assert not d.suppressed


def test_the_trend_filter_mirrors_shorts_and_can_be_turned_off() -> None:
    rising = [100.0 + i for i in range(40)]
    f = Feed(rules="hold", allow_short=True, trend_ma_bars=20, trend_momentum_bars=30)
    ds = [f.step(c, "bear") for c in rising]
    assert ds[0].position_after == "short" and ds[-1].position_after == "flat"
    assert ds[-1].rule == "trend_short.against_trend"
    off = Feed(rules="hold", allow_short=True, trend_filter=False, trend_ma_bars=20,
               trend_momentum_bars=30)
    assert all(off.step(c, "bear").position_after == "short" for c in rising)


def test_a_larger_size_is_gated_like_an_opening_a_smaller_one_never() -> None:
    rng = random.Random(5)
    f = sized_feed(min_confidence=0.7)
    for c in walk(rng, 100.0, 0.04, 100):  # a volatile start sets the long-run level high
        f.step(c, "bull")
    for c in walk(rng, 100.0, 0.12, 40):  # three times that: a small size
        d = f.step(c, "bull")
    small = d.exposure
    assert small <= 0.5
    for c in walk(rng, d.price, 0.01, 60):  # calm again, but the model is unsure
        d = f.step(c, "bull", conf=0.5)
        assert d.exposure == small
    assert "no resize" in (d.reason or "") and "confidence" in (d.reason or "")
    d = f.step(d.price, "bull", conf=0.9)
    assert d.action == "BUY" and d.exposure > small


def test_default_settings_on_spy_daily_beat_holding_and_the_moving_average() -> None:
    """The shipped index through ``aetherion replay`` with every default: a higher Sharpe and
    a smaller drawdown than buy-and-hold and the 200-day filter, with few changes a year (the
    figures of docs/decision.md; the other series are in bench/validate.py)."""
    from aetherion.replay import load, replay
    from aetherion.report import performance

    p = performance(replay(load(DATA / "us_equities" / "daily_spy.zip"), Settings(), "spy").rows)
    d, hold, ma = p["decisions"], p["buy_and_hold"], p["ma_filter"]
    assert d["sharpe"] > max(1.4 * hold["sharpe"], ma["sharpe"]), (d, hold, ma)
    assert d["max_drawdown"] < min(0.45 * hold["max_drawdown"], ma["max_drawdown"]), (d, hold)
    assert d["changes_per_year"] <= 10
