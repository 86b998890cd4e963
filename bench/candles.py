"""Candle engine throughput: trades/second folded into 1s..1h bars (columnar path, as replay).

Run: ``make bench`` or ``.venv/bin/python bench/candles.py [N]``. Prints one line of figures.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from aetherion.features.candles import CandleEngine


def main(n: int = 2_000_000) -> None:
    rng = np.random.default_rng(1)
    ts = (np.cumsum(rng.exponential(2.0, n)) + 1_700_000_000_000).astype(np.int64).tolist()
    price = (60_000 * np.exp(np.cumsum(rng.normal(0, 1e-5, n)))).tolist()
    size = rng.exponential(0.01, n).tolist()
    side = rng.choice([1, -1], n).tolist()
    eng = CandleEngine("bench", ["1s", "5s", "1m", "5m", "15m", "1h"])
    t0 = time.perf_counter()
    bars = eng.on_trades(ts, price, size, side)
    bars += eng.flush()
    dt = time.perf_counter() - t0
    print(f"candles: {n} trades -> {len(bars)} bars in {dt:.3f}s = {n / dt:,.0f} trades/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000)
