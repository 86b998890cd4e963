"""The regime model on simulators it was not built around, beside the ideal filter.

`bench/validate.py` scores the model on the shipped simulator. Issue 13 is judged on another
one, so this replays variants of it (other volatilities, drifts, stays, switches on bar edges)
and three plain Markov-switching markets that are not our simulator at all (``MARKOV``),
40,000 one-minute candles each with default settings, and prints per variant the accuracy of
`regime_raw`, its calibration error (ECE, 10 bins) and crisis precision / recall, beside an
**ideal filter**: the same forward filter on the same two inputs (log return, log bar
volatility) with the true parameters — each regime's mean and covariance and the transition
rates, estimated from the true labels of the first half and scored on the second. What the
ideal filter cannot reach on a variant, no filter on these inputs reaches. The last column
splits crisis recall by bars since a crisis began (model and ideal on the same second half):
where recall is lost.

    .venv/bin/python bench/sim_variants.py [--only base,calm4x] [--seed 1] [--jobs 2]
        [--regime-seconds 1800]

``--regime-seconds`` scales every regime's mean stay (the simulator's 1800: bull 45 minutes,
crisis 15); 7200 makes them four times as long.

The last line of stdout is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

import aetherion.ingest.simulated_market as sm
from aetherion.config import Settings
from aetherion.domain import REGIMES
from aetherion.features import bar_vol
from aetherion.replay import load, replay
from aetherion.report import classification
from aetherion.simulate import SimulateOptions, simulate

R = sm._Regime
CALM4X = (R("bull", 1.4e-4, 6e-4, stay=1.5), R("bear", -1.5e-4, 6e-4, stay=1.0),
          R("sideways", 0.0, 6e-4, pull=0.05, stay=1.0),
          R("crisis", -4.3e-4, 2.4e-3, nu=4.0, stay=0.5))
#: name: (what it is, regime parameters in REGIMES order, switches on minute edges)
VARIANTS: dict[str, tuple[str, tuple[Any, ...] | None, bool]] = {
    "base": ("the shipped simulator", None, False),
    "edges": ("the same, regimes switching on minute edges", None, True),
    "long-crisis": ("crises last as long as bear (30 min on average)",
                    (*sm.REGIME_PARAMS[:3], R("crisis", -4.3e-4, 1.8e-3, nu=4.0, stay=1.0)), False),
    "calm4x": ("one calm volatility for bull, bear and sideways; crisis 4x it, Student-t 4",
               CALM4X, False),
    "calm4x-edges": ("calm4x, switching on minute edges", CALM4X, True),
    "closer": ("calm volatilities closer together, fat tails everywhere",
               (R("bull", 1.4e-4, 5e-4, nu=6.0, stay=1.5), R("bear", -1.5e-4, 7e-4, nu=6.0),
                R("sideways", 0.0, 4e-4, pull=0.05), R("crisis", -4.3e-4, 2e-3, nu=3.0, stay=0.5)),
               False),
    "drift": ("one calm volatility, trends of half of it a minute",
              (R("bull", 3e-4, 6e-4, stay=1.5), R("bear", -3e-4, 6e-4, stay=1.0),
               R("sideways", 0.0, 6e-4, pull=0.05, stay=1.0),
               R("crisis", -4.3e-4, 2.4e-3, nu=4.0, stay=0.5)), False),
}
#: Not our simulator: a plain Markov chain of regimes on 1m bars (geometric stays as long on
#: average as the simulator's, its next-regime table, switches on bar edges), each bar a Brownian
#: path of 30 steps; name: (what it is, drift of bull / bear in calm volatilities a bar, the
#: calm volatilities of bull, bear and sideways; crisis 4x the first, Student-t 4 per bar)
MARKOV: dict[str, tuple[str, float, tuple[float, float, float]]] = {
    "markov": ("a plain Markov chain, one calm volatility, trends of a quarter of it a bar",
               0.25, (1.0, 1.0, 1.0)),
    "markov-half": ("the same, trends of half the calm volatility", 0.5, (1.0, 1.0, 1.0)),
    "markov-vols": ("the same with calm volatilities 0.8 / 1.3 / 0.6, trends of a quarter",
                    0.25, (0.8, 1.3, 0.6)),
}
BARS = 40_000


def markov_market(seed: int, drift: float, calm: tuple[float, float, float],
                  regime_seconds: float, steps: int = 30) -> pl.DataFrame:
    """``MARKOV``'s market: candles with their true regime."""
    rng = np.random.default_rng(seed)
    stay = np.array([r.stay for r in sm.REGIME_PARAMS]) * regime_seconds / 60.0  # in bars
    move = np.array(sm.TRANSITIONS) / stay[:, None]
    np.fill_diagonal(move, 1.0 - 1.0 / stay)
    cum, u = np.cumsum(move, axis=1), rng.random(BARS)
    state = np.empty(BARS, dtype=np.intp)
    state[0] = REGIMES.index("sideways")
    for t in range(1, BARS):
        state[t] = min(int(np.searchsorted(cum[state[t - 1]], u[t])), len(REGIMES) - 1)
    vol = 1e-3 * np.array([*calm, 4.0 * calm[0]])[state]
    vol *= np.where(state == REGIMES.index("crisis"), np.sqrt(2.0 / rng.chisquare(4.0, BARS)), 1.0)
    mu = 1e-3 * calm[0] * np.array([drift, -drift, 0.0, -drift])[state]
    path = np.cumsum(mu[:, None] / steps + (vol / math.sqrt(steps))[:, None]
                     * rng.standard_normal((BARS, steps)), axis=1)
    start = np.concatenate([[0.0], np.cumsum(path[:, -1])[:-1]])
    logs = start[:, None] + np.concatenate([np.zeros((BARS, 1)), path], axis=1)
    return pl.DataFrame({
        "ts": 1_704_067_200_000 + 60_000 * np.arange(BARS), "open": 100 * np.exp(start),
        "high": 100 * np.exp(logs.max(axis=1)), "low": 100 * np.exp(logs.min(axis=1)),
        "close": 100 * np.exp(logs[:, -1]), "volume": np.full(BARS, 10.0),
        "true_regime": [REGIMES[i] for i in state]})


def _use(params: tuple[Any, ...] | None, edges: bool) -> None:
    """Point the simulator module at a variant (this process only: each job is its own)."""
    if params is not None:
        sm.REGIME_PARAMS = params  # type: ignore[misc]  # a variant, in its own process
        sm._NEXT_CUM, sm._PREV_CUM, sm._AT_CUM = sm._chain_tables()
    if edges:
        forward = sm.SimulatedMarket._stays_forward

        def on_edges(self: Any, rng: Any, start: float, end: float) -> Any:
            starts, regs = forward(self, rng, start, end)
            starts = [starts[0]] + [math.ceil(t / 60_000) * 60_000 for t in starts[1:]]
            keep = [i for i in range(len(starts))
                    if i == len(starts) - 1 or starts[i] < starts[i + 1]]
            return [starts[i] for i in keep], [regs[i] for i in keep]

        sm.SimulatedMarket._stays_forward = on_edges  # type: ignore[method-assign]


def _scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, ECE and crisis precision / recall, by the replay summary's own scoring."""
    c = classification(rows) or {}
    crisis = c.get("per_regime", {}).get("crisis", {})
    return {"accuracy": c.get("accuracy"), "ece": c.get("ece"),
            "crisis_precision": crisis.get("precision"), "crisis_recall": crisis.get("recall")}


def onset_recall(rows: list[dict[str, Any]]) -> list[float]:
    """Crisis recall on the 1st, 2nd and 3rd bar of a crisis and on the bars after: where a
    filter loses recall (a crisis starting mid-bar shows in its first bar only in part)."""
    hit, n, since = np.zeros(4), np.zeros(4), -1
    for r in rows:
        since = since + 1 if r["true_regime"] == "crisis" else -1
        if since >= 0:
            n[min(since, 3)] += 1
            hit[min(since, 3)] += r["regime_raw"] == "crisis"
    return [round(float(h / k), 2) if k else math.nan for h, k in zip(hit, n, strict=True)]


def ideal(df: pl.DataFrame) -> dict[str, Any]:
    """The forward filter with the true parameters (first half) scored on the second half."""
    from scipy.stats import multivariate_normal  # type: ignore[import-untyped]

    bars = zip(*(df[c].to_list() for c in ("open", "high", "low", "close")), strict=True)
    vol = np.log([max(bar_vol(*b) or 0.0, 1e-12) for b in bars])  # a flat bar: a tiny one
    x = np.column_stack([np.diff(np.log(df["close"].to_numpy())), vol[1:]])
    state = np.array([REGIMES.index(r) for r in df["true_regime"].to_list()[1:]])
    half = len(x) // 2
    k = len(REGIMES)
    trans = np.full((k, k), 1e-6)
    np.add.at(trans, (state[:half - 1], state[1:half]), 1.0)
    trans /= trans.sum(axis=1, keepdims=True)
    logd = np.column_stack([
        multivariate_normal(x[:half][state[:half] == s].mean(axis=0),
                            np.cov(x[:half][state[:half] == s].T)).logpdf(x[half:])
        for s in range(k)])
    alpha = np.full(k, 1.0 / k)
    rows = []
    for row, truth in zip(logd, state[half:], strict=True):
        alpha = (alpha @ trans) * np.exp(row - row.max())
        alpha /= alpha.sum()
        rows.append({"regime_raw": REGIMES[int(alpha.argmax())],
                     "confidence_raw": float(alpha.max()), "true_regime": REGIMES[truth]})
    return {**_scores(rows), "onset_recall": onset_recall(rows)}


def run(job: tuple[str, int, float]) -> dict[str, Any]:
    name, seed, regime_seconds = job
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.parquet"
        if name in MARKOV:
            what, drift, calm = MARKOV[name]
            markov_market(seed, drift, calm, regime_seconds).write_parquet(path)
        else:
            what, params, edges = VARIANTS[name]
            _use(params, edges)
            simulate(SimulateOptions(out=path, bars=BARS, seed=seed,
                                     regime_seconds=regime_seconds))
        df = pl.read_parquet(path)
        loaded = load(path, "candles")
    res = replay(loaded, Settings(), "sim", "1m")
    half = (len(res.rows) - 1) // 2 + 1  # the bars the ideal filter is scored on
    return {"variant": name, "what": what, "seed": seed, "regime_seconds": regime_seconds,
            "model": {**_scores(res.rows), "onset_recall": onset_recall(res.rows[half:])},
            "ideal": ideal(df)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    known = [*VARIANTS, *MARKOV]
    ap.add_argument("--only", help=f"variants, comma-separated (default: {', '.join(known)})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--regime-seconds", type=float, default=1800.0,
                    help="the simulator's mean calm stay (default 1800)")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    with ProcessPoolExecutor(a.jobs, max_tasks_per_child=1) as pool:  # one variant a process
        rows = list(pool.map(run, [(n, a.seed, a.regime_seconds) for n in names]))
    print("| variant | accuracy: model / ideal | ECE: model / ideal "
          "| crisis precision / recall: model | ideal "
          "| crisis recall on bars 1, 2, 3, 4+ of a crisis: model | ideal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        m, i = r["model"], r["ideal"]
        print(f"| {r['variant']}: {r['what']} | {m['accuracy']:.3f} / {i['accuracy']:.3f} "
              f"| {m['ece']:.3f} / {i['ece']:.3f} "
              f"| {m['crisis_precision']:.2f} / {m['crisis_recall']:.2f} "
              f"| {i['crisis_precision']:.2f} / {i['crisis_recall']:.2f} "
              f"| {', '.join(f'{x:.2f}' for x in m['onset_recall'])} "
              f"| {', '.join(f'{x:.2f}' for x in i['onset_recall'])} |")
    print(json.dumps({"rows": rows}), flush=True)


if __name__ == "__main__":
    main()
