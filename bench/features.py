"""Feature engine throughput: incremental bars/s (as live and replay run it) and batch bars/s.

Run: ``make bench`` or ``.venv/bin/python bench/features.py [N]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from aetherion.domain import Bar
from aetherion.features import FeatureEngine, atr, rolling_volatility, true_range, volume_delta


def main(n: int = 1_000_000) -> None:
    rng = np.random.default_rng(5)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    high, low = close * (1 + rng.uniform(0, 2e-3, n)), close * (1 - rng.uniform(0, 2e-3, n))
    buy, sell = rng.exponential(5, n), rng.exponential(5, n)
    bars = [Bar("b", "1m", i * 60_000, c, h, lo, c, b + s, b, s, 10, True)
            for i, (h, lo, c, b, s) in enumerate(zip(high.tolist(), low.tolist(), close.tolist(),
                                                      buy.tolist(), sell.tolist(), strict=True))]
    eng = FeatureEngine("b", "1m")
    t0 = time.perf_counter()
    for b in bars:
        eng.on_bar(b)
    inc = time.perf_counter() - t0
    t0 = time.perf_counter()
    true_range(high, low, close)
    atr(high, low, close)
    rolling_volatility(close)
    volume_delta(buy, sell)
    batch = time.perf_counter() - t0
    print(f"features: {n} bars incremental {n / inc:,.0f} bars/s ({inc / n * 1e6:.2f} us/bar); "
          f"batch {n / batch:,.0f} bars/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
