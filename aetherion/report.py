"""What a replay's decisions would have earned, against two simple books, and its picture.

Execution: every row carries ``exposure``, the signed fraction of capital held after the decision
on that bar's close (-1 short .. 0 flat .. 1 long; a row without it uses its ``position``: long 1,
flat 0, short -1). The exposure decided on bar t's close is filled at bar t+1's open, never on the
close that made the signal, and held from that open to the next, so every bar's return is
open-to-open and the last bar's decision is never filled. The equity is rebalanced to the exposure
at every open at no cost; each change of exposure pays ``(fee_bps + slippage_bps) / 1e4`` per unit
of ``|change|`` (0 -> 0.5 pays half a unit, a reversal from 1 to -1 pays two).

``performance`` runs three books through the same fills and costs:

- ``decisions``: the rows' exposures;
- ``buy_and_hold``: exposure 1 from the first bar's open (one unit of cost there) to the last;
- ``ma_filter``: long when a bar's close is above the mean of the last ``ma_window`` closes
  (this one included), flat otherwise and while fewer than ``ma_window`` closes exist; decided on
  the close and filled at the next open like the decisions.

Each book reports its ``total_return``; ``cagr`` over the span of ``open_time`` (first to last
bar's open; None when the span is 0); ``annualized_volatility`` and ``sharpe`` (mean over standard
deviation of the per-bar returns net of costs, times sqrt(bars per year), no risk-free rate; None
when the deviation is 0); ``max_drawdown`` (a positive fraction); ``changes_per_year`` (bars whose
held exposure differs from the bar before: buy-and-hold's entry counts once) and
``turnover_per_year`` (units of exposure traded), both per year of span (None when it is 0); and
``time_in_market`` (share of bars held with non-zero exposure). ``decisions`` adds
``round_trips`` (exposure away from 0 until it returns to 0 or flips sign; a size change inside a
trip is the same trip; one still open is closed at the last open) and ``hit_rate`` (share of trips
whose compounded return, entry and exit costs included, is positive). Bars per year are those
actually observed in the input, so daily equity bars count trading days. Numbers are plain floats
or None, never NaN.

``classification`` scores the raw regime labels (``regime_raw``, ``confidence_raw``) against a
simulation's ``true_regime``: accuracy over the labelled bars and over all bars (``unknown`` is
wrong), precision and recall per regime, the confusion counts, the accuracy of always answering the
most frequent true regime, and the expected calibration error of ``confidence_raw`` (10 equal-width
bins on [0, 1], the last one closed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aetherion.domain import REGIMES

__all__ = ["DEFAULT_FEE_BPS", "DEFAULT_SLIPPAGE_BPS", "classification", "performance", "plot"]

DEFAULT_FEE_BPS = 1.0
DEFAULT_SLIPPAGE_BPS = 2.0
LEVEL = {"long": 1, "flat": 0, "short": -1}
YEAR_MS = 365.25 * 86_400_000
FLAT_SD = 1e-12  # a per-bar standard deviation below this is no variation at all: no Sharpe
ECE_BINS = 10

Array = npt.NDArray[np.float64]
#: a replay output row (``replay.result_rows``): values of mixed JSON types
Row = Mapping[str, Any]


def _exposures(rows: Sequence[Row]) -> Array:
    """Each row's exposure, or its position's level when the row has none."""
    return np.array([r["exposure"] if r.get("exposure") is not None else LEVEL[r["position"]]
                     for r in rows], dtype=float)


def performance(rows: Sequence[Row], fee_bps: float = DEFAULT_FEE_BPS,
                slippage_bps: float = DEFAULT_SLIPPAGE_BPS, ma_window: int = 200
                ) -> dict[str, Any]:
    """The decisions, buy-and-hold and the moving-average filter, filled as the module says."""
    if ma_window < 1:
        raise ValueError(f"ma_window must be at least 1, not {ma_window}")
    n = len(rows)
    if n < 2:
        return {"bars": n, "note": "fewer than two bars: nothing to trade"}
    opens = np.array([r["open"] for r in rows], dtype=float)
    closes = np.array([r["close"] for r in rows], dtype=float)
    cost = (fee_bps + slippage_bps) / 10_000
    bar_ret = opens[1:] / opens[:-1] - 1.0  # open i -> open i+1
    span_years = (rows[-1]["open_time"] - rows[0]["open_time"]) / YEAR_MS
    per_year = (n - 1) / span_years if span_years > 0 else float(n - 1)
    # held over (open i, open i+1): decided on close i-1, nothing before the first open
    held = {"decisions": np.concatenate([[0.0], _exposures(rows)[:-2]]),
            "buy_and_hold": np.ones(n - 1),
            "ma_filter": np.concatenate([[0.0], _ma_signal(closes, ma_window)[:-2]])}
    books = {name: _book(h, bar_ret, cost, per_year, span_years) for name, h in held.items()}
    trips, wins = _round_trips(held["decisions"], bar_ret, cost)
    books["decisions"] |= {"round_trips": trips, "hit_rate": wins / trips if trips else None}
    return {"bars": n, "fee_bps": float(fee_bps), "slippage_bps": float(slippage_bps),
            "execution": "next bar open", "bars_per_year": round(per_year, 2),
            "ma_window": ma_window, **books}


def _ma_signal(closes: Array, window: int) -> Array:
    """1.0 where the close is above its ``window``-close mean, 0.0 elsewhere and in the warm-up."""
    if len(closes) < window:
        return np.zeros(len(closes))
    # sums of deviations from the first close keep the cumulative sum small (and exact on a flat
    # series); the relative margin keeps rounding from calling a close equal to its mean "above"
    dev = closes - closes[0]
    csum = np.concatenate([[0.0], np.cumsum(dev)])
    mean = (csum[window:] - csum[:-window]) / window
    above = dev[window - 1:] - mean > 1e-9 * np.abs(closes[window - 1:])
    return np.concatenate([np.zeros(window - 1), above.astype(float)])


MIN_CAGR_YEARS = 7 / 365.25  # annualizing less than a week of bars says nothing


def _cagr(final: float, years: float | None) -> float | None:
    if years is None or years < MIN_CAGR_YEARS:
        return None
    if final <= 0:
        return -1.0
    return math.exp(min(math.log(final) / years, 700.0)) - 1.0  # no overflow, however short


def _book(held: Array, bar_ret: Array, cost: float, per_year: float,
          span_years: float) -> dict[str, float | None]:
    """One book's statistics from the exposure held over each open-to-open bar."""
    change = np.abs(np.diff(held, prepend=0.0))
    rets = held * bar_ret - change * cost
    equity = np.cumprod(1.0 + rets)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    sd = float(np.std(rets, ddof=1)) if len(rets) > 1 else 0.0
    years = span_years if span_years > 0 else None
    final = float(equity[-1])
    return {
        "total_return": final - 1.0,
        "cagr": _cagr(final, years),
        "annualized_volatility": sd * math.sqrt(per_year),
        "sharpe": (float(np.mean(rets)) / sd * math.sqrt(per_year)) if sd > FLAT_SD else None,
        "max_drawdown": float(np.max(1.0 - equity / peak)),
        "changes_per_year": None if years is None else int(np.count_nonzero(change)) / years,
        "time_in_market": float(np.mean(held != 0)),
        "turnover_per_year": None if years is None else float(np.sum(change)) / years,
    }


def _round_trips(held: Array, bar_ret: Array, cost: float) -> tuple[int, int]:
    """Round trips of the held exposure (see the module doc) and how many of them won."""
    side = np.sign(held)
    start = (side != 0) & (side != np.concatenate([[0.0], side[:-1]]))
    trips = int(np.count_nonzero(start))
    if not trips:
        return 0, 0
    inside = side != 0
    last = inside & (side != np.append(side[1:], 0.0))  # the trip's last bar: it exits after it
    # a trip's first bar pays only its own entry (a reversal's other half closed the trip before)
    traded = np.where(start, np.abs(held), np.abs(np.diff(held, prepend=0.0)))
    growth = np.maximum(1.0 + held * bar_ret - traded * cost, 1e-300)  # a wipe-out is a loss
    trip_of = np.cumsum(start) - 1
    log_growth = np.bincount(trip_of[inside], weights=np.log(growth[inside]), minlength=trips)
    log_growth += np.log1p(-np.abs(held[last]) * cost)
    return trips, int(np.count_nonzero(log_growth > 0))


def classification(rows: Sequence[Row]) -> dict[str, Any] | None:
    """How well ``regime_raw`` matches ``true_regime`` (see the module doc); None without truth."""
    scored = [r for r in rows if r.get("true_regime") in REGIMES]
    if not scored:
        return None
    k, labels = len(REGIMES), (*REGIMES, "unknown")  # any other raw label counts as unknown
    code = {label: i for i, label in enumerate(labels)}
    true = np.array([code[r["true_regime"]] for r in scored])
    pred = np.array([code.get(r.get("regime_raw") or "unknown", k) for r in scored])
    confusion = np.bincount(true * (k + 1) + pred, minlength=k * (k + 1)).reshape(k, k + 1)
    n, labelled = len(scored), int(np.count_nonzero(pred != k))
    correct = int(np.trace(confusion[:, :k]))
    support, predicted = confusion.sum(axis=1), confusion[:, :k].sum(axis=0)
    conf = np.array([np.nan if r.get("confidence_raw") is None else r["confidence_raw"]
                     for r in scored], dtype=float)
    return {
        "bars": n, "labelled": labelled,
        "accuracy": correct / labelled if labelled else None,
        "accuracy_all": correct / n,
        "baseline_accuracy": int(support.max()) / n,
        "per_regime": {regime: {
            "precision": int(confusion[i, i]) / int(predicted[i]) if predicted[i] else None,
            "recall": int(confusion[i, i]) / int(support[i]) if support[i] else None,
            "support": int(support[i])} for i, regime in enumerate(REGIMES)},
        "ece": _ece(conf[pred != k], (pred == true)[pred != k]),
        "confusion": {t: {p: int(confusion[i, j]) for j, p in enumerate(labels)}
                      for i, t in enumerate(REGIMES)},
    }


def _ece(confidence: Array, correct: npt.NDArray[np.bool_]) -> float | None:
    """Expected calibration error over the bars that have a confidence; None if none has."""
    known = ~np.isnan(confidence)
    if not known.any():
        return None
    conf = np.clip(confidence[known], 0.0, 1.0)
    bins = np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1)  # 1.0 joins the last bin
    # sum over bins of n_b/N * |acc_b - conf_b| = sum over bins of |hits_b - sum conf_b| / N
    hits = np.bincount(bins, weights=correct[known].astype(float), minlength=ECE_BINS)
    mass = np.bincount(bins, weights=conf, minlength=ECE_BINS)
    return float(np.sum(np.abs(hits - mass)) / len(conf))


REGIME_COLOURS = {"bull": "#1f9d55", "bear": "#cc1f1a", "sideways": "#8795a1",
                  "crisis": "#6f42c1", "unknown": "#dae1e7"}


def plot(rows: Sequence[Row], path: Path, title: str = "") -> None:
    """Price coloured by stable regime with decision markers, the exposure, and confidence."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    # matplotlib's date numbers: days since 1970-01-01 (its default epoch)
    x = np.array([r["open_time"] for r in rows], dtype=float) / 86_400_000
    close = np.array([r["close"] for r in rows], dtype=float)
    fig, (ax, axp, axc) = plt.subplots(
        3, 1, figsize=(13, 7.5), sharex=True, gridspec_kw={"height_ratios": [4, 1, 1.2]})
    pts = np.column_stack([x, close])
    segs = np.stack([pts[:-1], pts[1:]], axis=1)
    colours = [REGIME_COLOURS.get(r["regime"], "#000000") for r in rows[1:]]
    ax.add_collection(LineCollection(list(segs), colors=colours, linewidths=1.2))
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(close.min() * 0.97, close.max() * 1.03)
    for action, marker, colour in (("BUY", "^", "#1f9d55"), ("SELL", "v", "#cc1f1a")):
        idx = [i for i, r in enumerate(rows) if r["action"] == action]
        ax.scatter(x[idx], close[idx], marker=marker, s=14, color=colour, zorder=3,
                   label=action)
    handles = [Line2D([], [], color=c, lw=3, label=k) for k, c in REGIME_COLOURS.items()]
    ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0]], ncol=7, fontsize=8,
              loc="upper left")
    ax.set_ylabel("close")
    ax.set_title(title)
    axp.step(x, _exposures(rows), where="post", color="#3d4852", lw=0.8)
    axp.axhline(0.0, color="#b8c2cc", lw=0.5)
    axp.set_ylim(-1.1, 1.1)
    axp.set_yticks([-1, 0, 1], ["-1 short", "0", "1 long"])
    axp.set_ylabel("exposure")
    axc.fill_between(x, [r["confidence"] or 0.0 for r in rows], step="post", color="#6cb2eb")
    axc.set_ylim(0, 1.05)
    axc.set_ylabel("confidence")
    axc.xaxis_date()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
