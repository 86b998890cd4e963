"""What a replay's decisions would have earned, against buy-and-hold, and its picture.

Execution: a decision on bar t's close is filled at bar t+1's open (never on the close that made
the signal). The position (+1 long, 0 flat, -1 short) is then held from that open to the next
bar's open, so every bar's return is open-to-open. Each change of position pays
``fee_bps + slippage_bps`` per unit traded (a reversal trades two units). Buy-and-hold enters at
the first bar's open with the same costs and holds to the last bar's open. Annualization uses the
bars per year actually observed in the input (so daily equity bars count trading days).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_FEE_BPS", "DEFAULT_SLIPPAGE_BPS", "performance", "plot"]

DEFAULT_FEE_BPS = 1.0
DEFAULT_SLIPPAGE_BPS = 2.0
LEVEL = {"long": 1, "flat": 0, "short": -1}
YEAR_MS = 365.25 * 86_400_000


def _stats(rets: np.ndarray[Any, Any], bars_per_year: float) -> dict[str, float]:
    equity = np.cumprod(1.0 + rets)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    vol = float(np.std(rets, ddof=1)) * math.sqrt(bars_per_year) if len(rets) > 1 else 0.0
    return {
        "total_return": float(equity[-1] - 1.0) if len(equity) else 0.0,
        "annualized_volatility": vol,
        "max_drawdown": float(np.max(1.0 - equity / peak)) if len(equity) else 0.0,
    }


def performance(rows: Sequence[dict[str, Any]], fee_bps: float = DEFAULT_FEE_BPS,
                slippage_bps: float = DEFAULT_SLIPPAGE_BPS) -> dict[str, Any]:
    """Hypothetical performance of the rows' positions (see the module doc) and buy-and-hold."""
    n = len(rows)
    if n < 2:
        return {"bars": n, "note": "fewer than two bars: nothing to trade"}
    opens = np.array([r["open"] for r in rows], dtype=float)
    held = np.array([LEVEL[r["position"]] for r in rows], dtype=float)
    cost = (fee_bps + slippage_bps) / 10_000
    bar_ret = opens[1:] / opens[:-1] - 1.0  # open i -> open i+1
    pos = np.concatenate([[0.0], held[:-2]])  # held over (open i, open i+1): decided at close i-1
    prev = np.concatenate([[0.0], pos[:-1]])
    strat = pos * bar_ret - np.abs(pos - prev) * cost
    hold = bar_ret.copy()
    hold[0] -= cost
    span_years = (rows[-1]["open_time"] - rows[0]["open_time"]) / YEAR_MS
    per_year = (n - 1) / span_years if span_years > 0 else float(n - 1)
    trips, wins = _round_trips(pos, opens, cost)
    return {
        "bars": n, "fee_bps": fee_bps, "slippage_bps": slippage_bps,
        "execution": "next bar open", "bars_per_year": round(per_year, 2),
        "strategy": {**_stats(strat, per_year), "round_trips": trips,
                     "hit_rate": wins / trips if trips else None,
                     "exposure": float(np.mean(pos != 0))},
        "buy_and_hold": _stats(hold, per_year),
    }


def _round_trips(pos: np.ndarray[Any, Any], opens: np.ndarray[Any, Any],
                 cost: float) -> tuple[int, int]:
    """Round trips (a position opened and closed, a reversal closing one) and the winners."""
    trips = wins = 0
    entry_i, side = -1, 0.0
    for i in range(len(pos) + 1):
        p = pos[i] if i < len(pos) else 0.0  # whatever is open is closed at the last open
        if p == side:
            continue
        if side != 0.0:
            gross = side * (opens[i] / opens[entry_i] - 1.0)
            trips += 1
            wins += int(gross - 2 * cost > 0)
        entry_i, side = i, p
    return trips, wins


REGIME_COLOURS = {"bull": "#1f9d55", "bear": "#cc1f1a", "sideways": "#8795a1",
                  "crisis": "#6f42c1", "unknown": "#dae1e7"}


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Price coloured by stable regime with decision markers, the position, and confidence."""
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
    axp.step(x, [LEVEL[r["position"]] for r in rows], where="post", color="#3d4852", lw=0.8)
    axp.set_yticks([-1, 0, 1], ["short", "flat", "long"])
    axp.set_ylabel("position")
    axc.fill_between(x, [r["confidence"] or 0.0 for r in rows], step="post", color="#6cb2eb")
    axc.set_ylim(0, 1.05)
    axc.set_ylabel("confidence")
    axc.xaxis_date()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
