"""Validation of the regime model and the default decisions: every daily series shipped under
../shared/data and long simulated markets with known regimes, through `aetherion replay` with
default settings, in one table (issue 13; the table is in README.md and docs/regime.md).

Daily series: the decisions against buy-and-hold and a 200-bar moving-average filter (long above,
flat below), all filled at the next bar's open with the default 3 bp per unit of exposure
changed: Sharpe, max drawdown, exposure changes a year; and the share of days labelled crisis in
Oct-Nov 2008, in 2017 and overall. Simulations (`aetherion simulate`, 40,000 one-minute candles
each, replayed with `--kind candles --timeframe 1m`): accuracy of `regime_raw`, crisis precision
and recall, and the expected calibration error of `confidence_raw` (10 bins); and the accuracy and
crisis recall of the fused stable `regime` (1m to 1h fused, the stability rule), which decisions
act on.

    .venv/bin/python bench/validate.py [--jobs 2] [--seeds 1,2,3] [--only SPY,AAPL] [--external]
        [--files dax.csv,gold.csv]

``--external`` adds daily series that are not shipped here, as an out-of-sample check (nothing
was chosen on them): the NASDAQ Composite and the S&P 500 1999-2018 with OHLCV, and WTI crude
oil's closes 1986-2019 (FRED), as bundled in the ``arch`` package's wheel (``make bench``
installs it). ``--files`` adds daily files of your own, each read as ``aetherion replay`` reads
it (a Yahoo or FRED download as it comes) and named by its file name.

The last line of stdout is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from aetherion.config import Settings
from aetherion.replay import load, replay
from aetherion.report import classification, performance
from aetherion.simulate import SimulateOptions, simulate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPY = DATA / "us_equities" / "daily_spy.zip"
STOCKS = DATA / "daily" / "stocks20_close_1990_2022.csv.gz"
TICKERS = ("AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO", "LLY", "MRK",
           "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM")
DERIVED = ("EW20", "SPY-C")
EXTERNAL = {"NASDAQ": "nasdaq", "SP500": "sp500", "WTI": "wti"}  # name: arch.data module
SIM_BARS = 40_000


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def _crisis_share(rows: list[dict[str, Any]], start: str, end: str) -> float | None:
    lo, hi = _ms(start), _ms(end)
    sel = [r["regime"] for r in rows if lo <= r["open_time"] < hi and r["regime"] != "unknown"]
    return sum(r == "crisis" for r in sel) / len(sel) if sel else None


def _derived(name: str) -> pl.DataFrame:
    """Series built from the shipped ones, to try the defaults beyond SPY and single stocks:
    ``EW20``, an equal-weight index of the twenty stocks (rebalanced daily, closes only), and
    ``SPY-C``, SPY's closes alone (as a close-only index or commodity comes)."""
    if name == "EW20":
        wide = pl.read_csv(STOCKS, try_parse_dates=True)
        rets = wide.select(pl.col(t).pct_change() for t in TICKERS)
        mean = rets.select(pl.mean_horizontal(pl.all()).fill_null(0.0)).to_series()
        return pl.DataFrame({"ts": wide["Date"], "close": (1.0 + mean).cum_prod() * 100.0})
    return load(SPY).frame.select("ts", "close")


def _external(name: str) -> Path:
    """One of arch's bundled data files, replayed as it is (month/day/year dates, Yahoo's
    columns; FRED's ``DATE,DCOILWTICO`` with '.' on holidays)."""
    import importlib.util

    spec = importlib.util.find_spec("arch")  # located, not imported (arch pulls statsmodels)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("--external needs the arch package: make bench, or pip install arch")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / EXTERNAL[name]
    return next(folder.glob("*.csv.gz"))


def daily(name: str) -> dict[str, Any]:
    if name in EXTERNAL:
        loaded = load(_external(name), "candles")
    elif Path(name).suffix:  # a file of --files
        loaded, name = load(Path(name), "candles"), Path(name).name.split(".")[0]
    elif name in DERIVED:  # through a file, as a user would replay it
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.csv"
            _derived(name).write_csv(path)
            loaded = load(path, "candles")
    else:
        loaded = load(SPY) if name == "SPY" else load(STOCKS, "candles", column=name)
    t0 = time.perf_counter()
    res = replay(loaded, Settings(), name.lower())
    perf = performance(res.rows)
    books = {k: perf[k] for k in ("decisions", "buy_and_hold", "ma_filter")}
    return {
        "series": name, "kind": "daily", "bars": len(res.rows),
        "ohlc": bool((loaded.frame["high"] != loaded.frame["low"]).any()),
        "seconds": round(time.perf_counter() - t0, 1),
        **{f"{k}_{m}": v[m] for k, v in books.items()
           for m in ("sharpe", "max_drawdown", "changes_per_year", "total_return",
                     "time_in_market")},
        "crisis_octnov2008": _crisis_share(res.rows, "2008-10-01", "2008-12-01"),
        "crisis_2017": _crisis_share(res.rows, "2017-01-01", "2018-01-01"),
        "crisis_all": _crisis_share(res.rows, "1900-01-01", "2100-01-01"),
    }


def simulated(seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"sim{seed}.parquet"
        simulate(SimulateOptions(out=path, bars=SIM_BARS, seed=seed))
        loaded = load(path, "candles")
    t0 = time.perf_counter()
    res = replay(loaded, Settings(), f"sim{seed}", "1m")
    c = classification(res.rows) or {}
    crisis = c.get("per_regime", {}).get("crisis", {})
    # the fused stable regime (all timeframes, the stability rule): what decisions act on
    f = classification([{**r, "regime_raw": r["regime"], "confidence_raw": r["confidence"]}
                        for r in res.rows]) or {}
    return {
        "series": f"sim seed {seed}", "kind": "sim", "bars": len(res.rows),
        "seconds": round(time.perf_counter() - t0, 1), "accuracy": c.get("accuracy"),
        "baseline_accuracy": c.get("baseline_accuracy"), "crisis_precision":
        crisis.get("precision"), "crisis_recall": crisis.get("recall"), "ece": c.get("ece"),
        "fused_accuracy": f.get("accuracy"),
        "fused_crisis_recall": f.get("per_regime", {}).get("crisis", {}).get("recall"),
    }


def _run(job: tuple[str, Any]) -> dict[str, Any]:
    kind, arg = job
    return simulated(arg) if kind == "sim" else daily(arg)


def _f(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:.0%}" if pct else f"{x:.2f}"


def _ratio(r: dict[str, Any], measure: str) -> str:
    """The decisions' ``measure`` as a multiple of buy-and-hold's (blank unless B&H's is > 0)."""
    d, b = r[f"decisions_{measure}"], r[f"buy_and_hold_{measure}"]
    return f" ({d / b:.2f}×)" if d is not None and b is not None and b > 0 else ""


def _print_daily(rows: list[dict[str, Any]]) -> None:
    print("| series | Sharpe: decisions / B&H / MA (÷ B&H) "
          "| max drawdown: decisions / B&H / MA (÷ B&H) "
          "| changes a year: decisions / MA | crisis share: Oct–Nov 2008 / 2017 / all |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['series']}{'' if r['ohlc'] else ' (closes)'} "
              f"| {_f(r['decisions_sharpe'])} / {_f(r['buy_and_hold_sharpe'])} / "
              f"{_f(r['ma_filter_sharpe'])}{_ratio(r, 'sharpe')} "
              f"| {_f(r['decisions_max_drawdown'], True)} / "
              f"{_f(r['buy_and_hold_max_drawdown'], True)} / "
              f"{_f(r['ma_filter_max_drawdown'], True)}{_ratio(r, 'max_drawdown')} "
              f"| {r['decisions_changes_per_year']:.1f} / {r['ma_filter_changes_per_year']:.1f} "
              f"| {_f(r['crisis_octnov2008'], True)} / {_f(r['crisis_2017'], True)} / "
              f"{_f(r['crisis_all'], True)} |")


def _print_sims(rows: list[dict[str, Any]]) -> None:
    print("| simulation (40,000 1m candles) | accuracy (answering the commonest) "
          "| crisis precision / recall | calibration error (ECE) "
          "| fused stable regime: accuracy / crisis recall |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['series']} | {_f(r['accuracy'])} ({_f(r['baseline_accuracy'])}) "
              f"| {_f(r['crisis_precision'])} / {_f(r['crisis_recall'])} | {_f(r['ece'])} "
              f"| {_f(r['fused_accuracy'])} / {_f(r['fused_crisis_recall'])} |")


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    d = [r for r in rows if r["kind"] == "daily"]
    if not d:
        return {}

    def share(test: Any) -> str:
        return f"{sum(bool(test(r)) for r in d)} of {len(d)}"

    return {
        "sharpe_above_buy_and_hold": share(
            lambda r: (r["decisions_sharpe"] or 0) > (r["buy_and_hold_sharpe"] or 0)),
        "sharpe_above_ma_filter": share(
            lambda r: (r["decisions_sharpe"] or 0) > (r["ma_filter_sharpe"] or 0)),
        "drawdown_below_buy_and_hold": share(
            lambda r: r["decisions_max_drawdown"] < r["buy_and_hold_max_drawdown"]),
        "drawdown_below_ma_filter": share(
            lambda r: r["decisions_max_drawdown"] < r["ma_filter_max_drawdown"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seeds", default="1,2", help="simulation seeds (empty: none)")
    ap.add_argument("--only", help="daily series to run, e.g. SPY,EW20,AAPL (default: all 23)")
    ap.add_argument("--external", action="store_true",
                    help="also NASDAQ, SP500 and WTI (not shipped; from the arch package)")
    ap.add_argument("--files", help="daily files of your own to add, comma-separated")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else ["SPY", *DERIVED, *TICKERS]
    if a.external and not a.only:
        names += list(EXTERNAL)
    names += [f for f in (a.files or "").split(",") if f]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    jobs = [("sim", s) for s in seeds] + [("daily", n) for n in names]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(_run, jobs))
    _print_daily([r for r in rows if r["kind"] == "daily"])
    print()
    _print_sims([r for r in rows if r["kind"] == "sim"])
    totals = _totals(rows)
    print()
    for k, v in totals.items():
        print(f"{k.replace('_', ' ')}: {v}")
    print(json.dumps({"rows": rows, "totals": totals,
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
