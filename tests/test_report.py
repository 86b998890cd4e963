"""The replay report's arithmetic, checked by hand, and the picture."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aetherion.report import YEAR_MS, classification, performance, plot

DAY = 86_400_000
COST = 0.0003  # the default 1 bp fee + 2 bp slippage, per unit of exposure changed


def rows(opens: list[float], positions: list[str], actions: list[str] | None = None
         ) -> list[dict[str, Any]]:
    return [{"open_time": i * DAY, "open": o, "close": o, "position": p, "regime": "bull",
             "action": (actions or ["HOLD"] * len(opens))[i], "confidence": 0.8}
            for i, (o, p) in enumerate(zip(opens, positions, strict=True))]


def exposure_rows(opens: list[float], exposures: list[float],
                  closes: list[float] | None = None, step: float = DAY) -> list[dict[str, Any]]:
    closes = closes or opens
    return [{"open_time": round(i * step), "open": o, "close": c, "exposure": e,
             "regime": "bull", "action": "HOLD", "confidence": 0.5}
            for i, (o, c, e) in enumerate(zip(opens, closes, exposures, strict=True))]


def test_hand_checked_case() -> None:
    # Decided long on bars 0 and 1, flat on 2: long from bar 1's open to bar 3's open.
    r = rows([100, 110, 99, 99, 108.9], ["long", "long", "flat", "short", "short"])
    p = performance(r, fee_bps=1, slippage_bps=2)  # 3 bps a unit traded
    s, h = p["decisions"], p["buy_and_hold"]
    # open-to-open returns: +10%, -10%, 0%, +10%; held 0, 1, 1, 0 (never on the signal's bar)
    # decisions: 0, -0.1 - 0.0003 (entry), 0, -0.0003 (exit)
    assert s["total_return"] == pytest.approx(0.8997 * 0.9997 - 1)
    assert s["max_drawdown"] == pytest.approx(1 - 0.8997 * 0.9997)
    assert s["round_trips"] == 1 and s["hit_rate"] == 0.0  # bought 110, sold 99
    assert s["time_in_market"] == pytest.approx(0.5)
    rets = [0.0, -0.1003, 0.0, -0.0003]
    mean = sum(rets) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in rets) / 3)
    assert p["bars_per_year"] == pytest.approx(365.25)
    assert s["annualized_volatility"] == pytest.approx(sd * math.sqrt(365.25))
    # buy and hold: entry cost once, then +10%, -10%, 0%, +10%
    assert h["total_return"] == pytest.approx(1.0997 * 0.9 * 1.1 - 1)
    assert h["max_drawdown"] == pytest.approx(0.1)


def test_reversal_pays_two_units_and_counts_a_trip() -> None:
    r = rows([100, 100, 100, 100], ["long", "short", "short", "short"])
    p = performance(r, fee_bps=5, slippage_bps=5)  # 10 bps a unit
    # held 0, long, short: entry 1 unit, reversal 2 units; prices flat
    assert p["decisions"]["total_return"] == pytest.approx(0.999 * 0.998 - 1)
    assert p["decisions"]["round_trips"] == 2 and p["decisions"]["hit_rate"] == 0.0


def test_fractional_exposure_fills_costs_and_trips() -> None:
    r = exposure_rows([100, 110, 99, 99, 89.1], [0.5, 1.0, -0.5, 0.0, 0.0])
    p = performance(r)
    d = p["decisions"]
    # open-to-open returns +10%, -10%, 0%, -10%; held 0, 0.5, 1, -0.5 (decided a bar earlier);
    # |changes| 0, 0.5, 0.5, 1.5 at 3 bp a unit:
    #   0 | 0.5 * -0.1 - 0.5 * 0.0003 | 0 - 0.5 * 0.0003 | -0.5 * -0.1 - 1.5 * 0.0003
    rets = [0.0, -0.05015, -0.00015, 0.04955]
    assert d["total_return"] == pytest.approx(0.94985 * 0.99985 * 1.04955 - 1)
    assert d["max_drawdown"] == pytest.approx(1 - 0.94985 * 0.99985)
    assert d["sharpe"] == pytest.approx(
        statistics.mean(rets) / statistics.stdev(rets) * math.sqrt(365.25))
    # 3 of 4 bars change exposure, 2.5 units in all, over a span of 4 days
    assert d["changes_per_year"] == pytest.approx(3 / (4 / 365.25))
    assert d["turnover_per_year"] == pytest.approx(2.5 / (4 / 365.25))
    assert d["time_in_market"] == pytest.approx(0.75)
    # one long trip (0.5 then 1: -5% then flat, loses) and one short trip (0.5 short into a 10%
    # fall: (1 - 0.00015) * (1 + 0.05 - 0.00015) * (1 - 0.00015) > 1, wins)
    assert d["round_trips"] == 2 and d["hit_rate"] == 0.5
    assert p["ma_window"] == 200 and p["fee_bps"] == 1.0 and p["slippage_bps"] == 2.0
    # fewer than 200 closes: the MA filter never leaves cash
    assert p["ma_filter"]["time_in_market"] == 0.0 and p["ma_filter"]["total_return"] == 0.0
    assert p["ma_filter"]["changes_per_year"] == 0.0 and p["ma_filter"]["sharpe"] is None


def test_rows_without_exposure_use_the_position() -> None:
    positioned = rows([100, 103, 99, 104, 101], ["long", "short", "flat", "long", "flat"])
    levels = exposure_rows([100, 103, 99, 104, 101], [1.0, -1.0, 0.0, 1.0, 0.0])
    assert performance(positioned) == performance(levels)


def test_ma_filter_waits_for_a_full_window() -> None:
    # closes 1..5, window 3: close 2 is above the mean of 1 and 2, but two closes are no window
    # signals 0, 0, 1, 1, 1 -> held 0, 0, 0, 1 over returns +100%, +50%, +33%, +25%
    r = exposure_rows([1, 2, 3, 4, 5], [0.0] * 5)
    m = performance(r, ma_window=3)["ma_filter"]
    assert m["time_in_market"] == pytest.approx(0.25)
    assert m["total_return"] == pytest.approx(0.25 - COST)


def test_ma_filter_decides_on_the_close_and_fills_at_the_next_open() -> None:
    closes = [10, 11, 12, 11, 10, 12, 12, 12, 12]
    # window 3 means from bar 2: 11, 11.33, 11, 11, 11.33, 12, 12 against closes 12, 11, 10, 12,
    # 12, 12, 12: long on 2, 5, 6 (a close equal to its mean is not above it)
    # held over the 8 open-to-open bars: 0, 0, 0, 1, 0, 0, 1, 1 -> 3 changes, 3/8 in the market
    opens = [100.0, 100, 100, 100, 110, 110, 110, 99, 99]
    m = performance(exposure_rows(opens, [0.0] * 9, closes), ma_window=3)["ma_filter"]
    assert m["time_in_market"] == pytest.approx(3 / 8)
    assert m["changes_per_year"] == pytest.approx(3 / (8 / 365.25))
    # long over 100 -> 110 (+10%), then flat, then long over 110 -> 99 (-10%) and 99 -> 99
    assert m["total_return"] == pytest.approx((1.1 - COST) * (1 - COST) * (0.9 - COST) - 1)


def test_ma_filter_calls_a_flat_stretch_flat() -> None:
    # 5,000 closes of a random walk, then 250 of 100.3: from bar 5,199 on the window holds only
    # 100.3, the close equals its mean and the filter must be flat, rounding notwithstanding
    walk = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.01, 5_000)))
    closes = [*walk, *[100.3] * 250]
    still = exposure_rows([100.0] * 5_250, [0.0] * 5_250, closes)
    rising = exposure_rows([100.0] * 5_201 + [100.0 * 1.01 ** k for k in range(1, 50)],
                           [0.0] * 5_250, closes)
    # the opens move only over bars held on signals from bar 5,199 on: flat, so no difference
    a, b = (performance(r)["ma_filter"] for r in (still, rising))
    assert a["time_in_market"] > 0 and a == b


def test_cagr_sharpe_and_a_year_per_bar() -> None:
    r = exposure_rows([100, 121, 121], [0.0, 0.0, 0.0], step=YEAR_MS)
    p = performance(r)
    h, d = p["buy_and_hold"], p["decisions"]
    assert p["bars_per_year"] == pytest.approx(1.0)
    # buy and hold: +21% less the entry's 3 bp, then 0%, over two years
    assert h["total_return"] == pytest.approx(0.2097)
    assert h["cagr"] == pytest.approx(math.sqrt(1.2097) - 1)
    # returns 0.2097 and 0: mean 0.10485, sample sd 0.10485 * sqrt(2), one bar a year
    assert h["sharpe"] == pytest.approx(1 / math.sqrt(2))
    assert h["annualized_volatility"] == pytest.approx(0.10485 * math.sqrt(2))
    assert h["changes_per_year"] == pytest.approx(0.5) and h["time_in_market"] == 1.0
    assert h["turnover_per_year"] == pytest.approx(0.5)
    # never in the market: no return, no variation, no trips
    assert d["total_return"] == 0.0 and d["cagr"] == 0.0 and d["sharpe"] is None
    assert d["round_trips"] == 0 and d["hit_rate"] is None
    json.dumps(p, allow_nan=False)


def test_a_span_of_zero_has_no_yearly_figures() -> None:
    r = exposure_rows([100, 101, 102], [1.0, 1.0, 1.0], step=0)
    p = performance(r)
    for book in ("decisions", "buy_and_hold", "ma_filter"):
        assert p[book]["cagr"] is None and p[book]["changes_per_year"] is None
        assert p[book]["turnover_per_year"] is None
    assert p["bars_per_year"] == 2.0
    json.dumps(p, allow_nan=False)
    assert performance(r[:1]) == {"bars": 1, "note": "fewer than two bars: nothing to trade"}
    with pytest.raises(ValueError, match="ma_window"):
        performance(r, ma_window=0)


def test_vectorized_books_match_a_bar_by_bar_loop() -> None:
    rng = np.random.default_rng(7)
    n, window, cost = 40_000, 50, 0.0005
    opens = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    closes = opens * np.exp(rng.normal(0, 0.005, n))
    decided = np.round(np.clip(np.cumsum(rng.normal(0, 0.3, n)) % 3 - 1.5, -1, 1), 1)
    decided[rng.random(n) < 0.3] = 0.0
    r = exposure_rows(list(opens), list(decided), list(closes), step=3_600_000)
    p = performance(r, fee_bps=2, slippage_bps=3, ma_window=window)
    signal = [float(t >= window - 1 and closes[t] > math.fsum(closes[t - window + 1:t + 1])
                    / window) for t in range(n)]
    for name, decisions in (("decisions", list(decided)), ("ma_filter", signal)):
        equity, peak, worst, prev, changes, trips, wins = 1.0, 1.0, 0.0, 0.0, 0, 0, 0
        trip_growth, side = 1.0, 0.0
        for i in range(n - 1):
            held = decisions[i - 1] if i else 0.0
            ret = held * (opens[i + 1] / opens[i] - 1) - abs(held - prev) * cost
            equity *= 1 + ret
            peak = max(peak, equity)
            worst = max(worst, 1 - equity / peak)
            changes += held != prev
            new_side = float(np.sign(held))
            if new_side != side:  # close the open trip at this open, start the next
                if side:
                    trips += 1
                    wins += trip_growth * (1 - abs(prev) * cost) > 1
                trip_growth = 1 + held * (opens[i + 1] / opens[i] - 1) - abs(held) * cost
                side = new_side
            elif side:
                trip_growth *= 1 + held * (opens[i + 1] / opens[i] - 1) - abs(held - prev) * cost
            prev = held
        if side:
            trips += 1
            wins += trip_growth * (1 - abs(prev) * cost) > 1
        book = p[name]
        assert book["total_return"] == pytest.approx(equity - 1, rel=1e-9, abs=1e-12)
        assert book["max_drawdown"] == pytest.approx(worst, rel=1e-9)
        years = (n - 1) * 3_600_000 / YEAR_MS
        assert book["changes_per_year"] == pytest.approx(changes / years)
        if name == "decisions":
            assert (book["round_trips"], book["hit_rate"]) == (trips, pytest.approx(wins / trips))
    assert 0 < p["ma_filter"]["time_in_market"] < 1 and p["decisions"]["round_trips"] > 100


def regime_rows(table: list[tuple[str, str, float | None]]) -> list[dict[str, Any]]:
    return [{"true_regime": t, "regime_raw": p, "confidence_raw": c} for t, p, c in table]


TABLE: list[tuple[str, str, float | None]] = [
    ("bull", "bull", 0.9),          # right, bin 9
    ("bull", "bull", 0.8),          # right, bin 8
    ("bull", "bear", 0.6),          # wrong, bin 6
    ("bull", "unknown", None),      # no label
    ("bear", "bear", 0.7),          # right, bin 7
    ("bear", "sideways", 0.55),     # wrong, bin 5
    ("sideways", "sideways", 0.95),  # right, bin 9
    ("sideways", "bull", 1.0),      # wrong, bin 9 (the last bin holds 1.0)
    ("crisis", "crisis", 0.92),     # right, bin 9
    ("crisis", "unknown", None),    # no label
]


def test_classification_by_hand() -> None:
    extra = regime_rows([("unknown", "bull", 0.9)]) + [{"regime_raw": "bear"}]  # not scored
    c = classification(regime_rows(TABLE) + extra)
    assert c is not None
    # 10 scored bars, 8 labelled, 5 right
    assert (c["bars"], c["labelled"]) == (10, 8)
    assert c["accuracy"] == pytest.approx(5 / 8) and c["accuracy_all"] == pytest.approx(0.5)
    assert c["baseline_accuracy"] == pytest.approx(0.4)  # bull is 4 of 10
    # predicted bull 3 times (2 right), bear 2 (1), sideways 2 (1), crisis 1 (1)
    assert c["per_regime"] == {
        "bull": {"precision": pytest.approx(2 / 3), "recall": 0.5, "support": 4},
        "bear": {"precision": 0.5, "recall": 0.5, "support": 2},
        "sideways": {"precision": 0.5, "recall": 0.5, "support": 2},
        "crisis": {"precision": 1.0, "recall": 0.5, "support": 2},
    }
    # ECE over the 8 labelled bars, as n_bin * |accuracy - mean confidence| summed, then / 8:
    #   bin 5: 1 bar, 0 right, 0.55 -> 0.55     bin 6: 1 bar, 0 right, 0.6 -> 0.6
    #   bin 7: 1 bar, 1 right, 0.7 -> 0.3       bin 8: 1 bar, 1 right, 0.8 -> 0.2
    #   bin 9: 4 bars, 3 right, confidences 0.9 + 0.95 + 0.92 + 1.0 = 3.77 -> |3 - 3.77| = 0.77
    #   (0.55 + 0.6 + 0.3 + 0.2 + 0.77) / 8 = 2.42 / 8 = 0.3025
    # (had 1.0 got a bin of its own: (0.55 + 0.6 + 0.3 + 0.2 + 0.23 + 1.0) / 8 = 0.36)
    assert c["ece"] == pytest.approx(0.3025)
    assert c["confusion"]["bull"] == {"bull": 2, "bear": 1, "sideways": 0, "crisis": 0,
                                      "unknown": 1}
    assert c["confusion"]["sideways"] == {"bull": 1, "bear": 0, "sideways": 1, "crisis": 0,
                                          "unknown": 0}
    json.dumps(c, allow_nan=False)


def test_calibrated_confidence_has_no_calibration_error() -> None:
    # bin 7: four bars at 0.75, three right; bin 2: five bars at 0.2, one right; bin 9: two at
    # 1.0, both right. Accuracy equals confidence in every bin.
    table: list[tuple[str, str, float | None]] = (
        [("bull", "bull", 0.75)] * 3 + [("bull", "bear", 0.75)]
        + [("bear", "bear", 0.2)] + [("bear", "crisis", 0.2)] * 4
        + [("crisis", "crisis", 1.0)] * 2 + [("sideways", "unknown", None)])
    c = classification(regime_rows(table))
    assert c is not None and c["ece"] == pytest.approx(0.0, abs=1e-12)
    assert c["accuracy"] == pytest.approx(6 / 11) and c["accuracy_all"] == pytest.approx(6 / 12)


def test_undefined_classification_figures_are_none() -> None:
    assert classification(rows([100, 101], ["flat", "long"])) is None
    assert classification(regime_rows([("unknown", "bull", 0.5)])) is None
    c = classification(regime_rows([("bull", "unknown", None), ("bull", "unknown", 0.3)]))
    assert c is not None
    assert c["labelled"] == 0 and c["accuracy"] is None and c["ece"] is None
    assert c["accuracy_all"] == 0.0 and c["baseline_accuracy"] == 1.0
    assert c["per_regime"]["bull"] == {"precision": None, "recall": 0.0, "support": 2}
    assert c["per_regime"]["bear"] == {"precision": None, "recall": None, "support": 0}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    r = rows([100, 101, 99, 102], ["flat", "long", "long", "flat"],
             ["HOLD", "BUY", "HOLD", "SELL"])
    out = tmp_path / "p.png"
    plot(r, out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_draws_exposure_without_positions(tmp_path: Path) -> None:
    r = exposure_rows([100, 101, 99, 102], [0.0, 0.5, -0.25, 1.0])
    out = tmp_path / "e.png"
    plot(r, out, "exposure")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
