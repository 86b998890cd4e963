"""Regime model figures: fit time, per-bar filter cost, and the SPY daily judgement tables.

Run: ``.venv/bin/python bench/regime.py [--markdown]``. Prints
- ``fit``: seconds per fit of a 500-bar SPY window with the default 4 restarts, 100 iterations;
- ``step``: microseconds per closed bar for ``on_features`` (the O(K^2) forward filter) and
  ``fuse`` over 3 timeframes;
- the walk-forward replay of SPY daily bars 1998-2021 through the live pipeline with default
  settings: per year, the share of days in each stable fused regime and the mean next-day log
  return (bp) of the days in it; then over all years, per regime, the share, same-day and next-day
  mean return, and the annualized realized volatility of the days in it.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import sys
import time
import zipfile
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from aetherion.config import MarketConfig, Settings
from aetherion.domain import REGIMES, Bar, Features
from aetherion.features import FeatureEngine
from aetherion.pipeline import ListSink, MarketPipeline
from aetherion.regime.config import RegimeConfig
from aetherion.regime.engine import RegimeEngine
from aetherion.regime.model import BASE_INPUTS, TrainRequest, fit, observation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from datadir import DATA  # noqa: E402

NAMES = (*REGIMES, "unknown")


def spy_bars() -> list[Bar]:
    with zipfile.ZipFile(DATA / "us_equities" / "daily_spy.zip") as z:
        rows = list(csv.reader(io.TextIOWrapper(z.open("spy.csv"))))
    out = []
    for r in rows:
        t = int(datetime.strptime(r[0][:8], "%Y%m%d").replace(tzinfo=UTC).timestamp() * 1000)
        o, h, lo, c = (float(x) / 10_000 for x in r[1:5])
        out.append(Bar("spy", "1d", t, o, h, lo, c, float(r[5]), 0.0, 0.0, 1, True, sided=False))
    return out


def bench_fit(feats: list[Features]) -> None:
    obs = [x for f in feats if (x := observation(f)) is not None]
    times, rejected = [], 0
    for start in range(0, len(obs) - 500, 500):
        t0 = time.perf_counter()
        r = fit(TrainRequest("spy", "1d", obs[start:start + 500], BASE_INPUTS, 0, 1))
        times.append(time.perf_counter() - t0)
        rejected += not r.ok
    print(f"fit: {len(times)} windows of 500 bars, 4 restarts x <=100 iterations: median "
          f"{statistics.median(times):.3f} s, max {max(times):.3f} s, rejected {rejected}")


def bench_step(feats: list[Features]) -> None:
    obs = [x for f in feats if (x := observation(f)) is not None]
    res = fit(TrainRequest("spy", "1d", obs[:500], BASE_INPUTS, 0, 1))
    tfs = ("1d", "5m", "1h")
    eng = RegimeEngine("spy", tfs, RegimeConfig(retrain_bars=10**9))
    for tf in tfs:
        eng.install(replace(res, request=replace(res.request, timeframe=tf)), 0)
    stream = [f for f in feats if f.extra.get("momentum") is not None]
    t0 = time.perf_counter()
    for f in stream:
        eng.on_features(f)
    t_step = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in stream:
        eng.fuse(f.open_time + 86_400_000)
    t_fuse = time.perf_counter() - t0
    n = len(stream)
    print(f"step: on_features {t_step / n * 1e6:.1f} us/bar (filter + stability), "
          f"fuse over 3 timeframes {t_fuse / n * 1e6:.1f} us/bar ({n} bars)")


def judge(bars: list[Bar], markdown: bool) -> None:
    sink = ListSink()
    s = Settings(timeframes="1d", decision_timeframe="1d")  # type: ignore[arg-type]
    pipe = MarketPipeline(MarketConfig(id="spy", venue="us", connector="simulator",
                                       symbol="SPY"), s, sink)
    t0 = time.perf_counter()
    pipe.on_bars(bars)
    elapsed = time.perf_counter() - t0
    regime = {u.open_time: u.regime for u in sink.regimes if u.timeframe == "fused"}
    days = []  # (year, regime, same-day log return, next-day log return)
    nexts: list[Bar | None] = [*bars[2:], None]
    for prev, cur, nxt in zip(bars[:-1], bars[1:], nexts, strict=True):
        r = regime.get(cur.open_time, "unknown")
        ret = math.log(cur.close / prev.close)
        nextr = math.log(nxt.close / cur.close) if nxt is not None else math.nan
        days.append((datetime.fromtimestamp(cur.open_time / 1000, UTC).year, r, ret, nextr))
    models = sum(m.status == "active" for m in sink.models)
    print(f"spy daily: {len(bars)} bars through the pipeline in {elapsed:.2f} s, "
          f"{models} models, {len(sink.transitions)} transitions")
    by_year: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for y, r, _same, nextr in days:
        by_year[y].append((r, nextr))
    head = ["year", *(f"{n} share" for n in NAMES), *(f"{n} next-day bp" for n in REGIMES)]
    rows = []
    for y, items in sorted(by_year.items()):
        shares = [sum(r == n for r, _ in items) / len(items) for n in NAMES]
        means = []
        for n in REGIMES:
            xs = [x for r, x in items if r == n and math.isfinite(x)]
            means.append(f"{statistics.fmean(xs) * 1e4:+.1f}" if xs else "")
        rows.append([str(y), *(f"{v:.2f}" for v in shares), *means])
    table(head, rows, markdown)
    print()
    head = ["regime", "share of days", "same-day bp", "next-day bp", "realized vol (ann.)"]
    rows = []
    for n in NAMES:
        rets = [x for _, r, x, _ in days if r == n]
        fwd = [x for _, r, _, x in days if r == n and math.isfinite(x)]
        if not rets:
            continue
        vol_ann = statistics.pstdev(rets) * math.sqrt(252)
        rows.append([n, f"{len(rets) / len(days):.3f}", f"{statistics.fmean(rets) * 1e4:+.1f}",
                     f"{statistics.fmean(fwd) * 1e4:+.1f}", f"{vol_ann:.1%}"])
    table(head, rows, markdown)


def table(head: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + " --- |" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        w = max(len(h) for h in head)
        print("  ".join(f"{h:>{min(w, 18)}}" for h in head))
        for r in rows:
            print("  ".join(f"{c:>{min(w, 18)}}" for c in r))


def main() -> None:
    bars = spy_bars()
    fe = FeatureEngine("spy", "1d")
    feats = [fe.on_bar(b) for b in bars]
    bench_fit(feats)
    bench_step(feats)
    judge(bars, "--markdown" in sys.argv)


if __name__ == "__main__":
    main()
