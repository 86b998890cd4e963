"""Replay throughput: trades/s of ``aetherion replay`` end to end beside the vectorized floor.

(a) the replay pipeline (1m, 5m, 15m, 1h bars, features, regimes with model training, decisions;
stores off) on 2,000,000 synthetic trades (random walk, 1-50 ms apart, seed 42) or, with
``--spy``, the 1.89 million real SPY trades of 2013-10-07..11; (b) a polars ``group_by_dynamic``
1-minute OHLCV of the same trades; (c) NautilusTrader's ``BacktestEngine`` building 1-minute
bars from the same trades for a strategy subscribed to them (installed by ``make bench``, the
``bench`` extra).
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


def nautilus(df: pl.DataFrame) -> tuple[float, float, int] | None:
    """NautilusTrader's ``BacktestEngine``: the same trades as TradeTicks of one instrument,
    1-minute bars aggregated inside the engine for a strategy that counts them. Returns (run
    seconds, seconds to build the ticks, bars), or None without the ``bench`` extra."""
    try:
        from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    except ImportError:
        return None
    import pandas as pd
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.model.currencies import BTC, USDT
    from nautilus_trader.model.data import Bar, BarType
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.objects import Money
    from nautilus_trader.persistence.wranglers import TradeTickDataWrangler
    from nautilus_trader.test_kit.providers import TestInstrumentProvider
    from nautilus_trader.trading.strategy import Strategy

    inst = TestInstrumentProvider.btcusdt_binance()  # prices to 0.01, sizes to 1e-6
    bar_type = BarType.from_str(f"{inst.id}-1-MINUTE-LAST-INTERNAL")

    class CountBars(Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.bars = 0

        def on_start(self) -> None:
            self.subscribe_bars(bar_type)

        def on_bar(self, bar: Bar) -> None:
            self.bars += 1

    t0 = time.perf_counter()
    frame = pd.DataFrame(
        {"price": np.round(df["price"].to_numpy(), 2),
         "quantity": np.maximum(np.round(df["size"].to_numpy(), 6), 1e-6),
         "buyer_maker": df["side"].to_numpy() < 0, "trade_id": np.arange(len(df)).astype(str)},
        index=pd.to_datetime(df["ts"].to_numpy(), unit="ms", utc=True))
    ticks = TradeTickDataWrangler(inst).process(frame)
    build = time.perf_counter() - t0
    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(log_level="ERROR")))
    engine.add_venue(venue=Venue("BINANCE"), oms_type=OmsType.NETTING,
                     account_type=AccountType.CASH, base_currency=None,
                     starting_balances=[Money(1_000_000, USDT), Money(100, BTC)])
    engine.add_instrument(inst)
    engine.add_data(ticks)
    strategy = CountBars()
    engine.add_strategy(strategy)
    t0 = time.perf_counter()
    engine.run()
    run = time.perf_counter() - t0
    engine.dispose()
    return run, build, strategy.bars


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
    nt = nautilus(df)
    if nt is None:
        print("nautilus_trader is not installed (make bench installs it): not compared",
              file=sys.stderr)
    else:
        c, build, nt_bars = nt
        out.update(nautilus_trades_per_s=round(n / c), nautilus_bars=nt_bars,
                   nautilus_tick_build_s=round(build, 2),
                   aetherion_over_nautilus=round(c / a, 1))
        print(f"nautilus 1m bars: {n:,} trades in {c:.2f} s = {n / c:,.0f} trades/s "
              f"({nt_bars} bars; building the TradeTicks took {build:.2f} s more) "
              f"(aetherion/nautilus = {c / a:.1f})", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
