"""Binance kline history (what warms the regime model up at start) against the fake server."""

from __future__ import annotations

import time

from fakes.binance_server import FakeBinance
from test_binance import Running, all_received, native, recording, server  # noqa: F401

from aetherion.domain import BUY, SELL, Tick
from aetherion.features.candles import CandleEngine


async def test_klines_equal_candles_of_the_published_trades(server: FakeBinance) -> None:  # noqa: F811
    run = Running(native(server))
    server.play()
    await all_received(server, run)
    await run.stop()
    published = [Tick("btcusdt", d["T"], float(d["p"]), float(d["q"]),
                      SELL if d["m"] else BUY, str(d["t"])) for d in server.published]
    eng = CandleEngine("btcusdt", ["1s"], 0)
    want = [b for b in eng.on_ticks(published) + eng.flush()]
    end = want[-1].open_time  # the last 1s bar may still be open: ask for the ones before it
    got = await native(server).history("1s", 50, end)
    ref = [b for b in want if b.open_time < end][-50:]
    assert [b.open_time for b in got] == [b.open_time for b in ref]
    for g, r in zip(got, ref, strict=True):
        assert (g.open, g.high, g.low, g.close, g.trade_count) == (
            r.open, r.high, r.low, r.close, r.trade_count)
        assert abs(g.volume - r.volume) < 1e-7 and abs(g.buy_volume - r.buy_volume) < 1e-7
        assert g.closed and g.sided
    assert await native(server).history("5s", 10, int(time.time() * 1000)) == []  # no 5s klines
