"""The simulated market's cost: the live stream per trade, and a start's history.

``make run`` streams every simulated market from :class:`SimulatedMarket` in the server's event
loop, so a trade must cost a few microseconds; a start draws 600 bars of history per timeframe.
(These were timed assertions in ``tests/test_simulator.py``; a busy machine failed them.)

Run: ``.venv/bin/python bench/simulator_stream.py``. The last line is JSON.
"""

from __future__ import annotations

import json
import math
import time

from aetherion.ingest.simulated_market import SimulatedMarket


def main() -> None:
    per_trade = history = math.inf
    for _ in range(3):
        m = SimulatedMarket("btcusdt", "crypto", 60_000.0, 7, 1800.0, 50.0)
        t0 = time.perf_counter()
        n = sum(len(m.trades(t, t + 50, 50.0)) for t in range(0, 600_000, 50))
        per_trade = min(per_trade, (time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        m.history("1h", 600, 1_800_000_000_000)
        history = min(history, time.perf_counter() - t0)
    print(f"live stream: {per_trade * 1e6:.2f} us a trade (target < 10 us); "
          f"600 1h bars of history: {history * 1e3:.0f} ms (target < 500 ms)")
    print(json.dumps({"us_per_trade": round(per_trade * 1e6, 3),
                      "history_ms": round(history * 1e3, 1)}))


if __name__ == "__main__":
    main()
