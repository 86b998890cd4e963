"""Ingest throughput: the recorded Binance messages, as raw JSON text, through

- ``native``: the native connector's typed decoding, normalization to ticks, the local order
  book (depth diffs) and the candle engine (ticks in batches, as the pipeline gets them);
- ``native decode only``: the msgspec decode of the same frames;
- ``orjson.loads`` plus reading the fields the connector needs;
- ``json.loads`` (standard library) plus the same field access;
- ``ccxt.pro handler``: ccxt's own binance ``handle_message`` (trade and depth parsing,
  caches, futures), after its orjson decode, as its receive loop runs it.

Run: ``.venv/bin/python bench/ingest_throughput.py [REPEATS]``. Prints one line per path.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import orjson

from aetherion.domain import Tick
from aetherion.features.candles import CandleEngine
from aetherion.ingest.binance import BinanceDecoder, DepthMsg, TradeMsg
from aetherion.ingest.orderbook import OrderBook

DATA = Path("/work/shared/data/binance")
BATCH = 64  # messages per queue hop in the live connector is 1; replay-like batches here


def load() -> tuple[list[str], dict[str, Any]]:
    frames: list[str] = []
    snapshot: dict[str, Any] = {}
    for day in ("20240808", "20240809"):
        with gzip.open(DATA / f"spot_btcusdt_{day}.gz", "rt") as f:
            for line in f:
                raw = line.split(" ", 1)[1].rstrip("\n")
                if "lastUpdateId" in raw[:20]:
                    snapshot = snapshot or orjson.loads(raw)
                elif "@bookTicker" not in raw[:40]:
                    frames.append(raw)
    return frames, snapshot


def native(frames: list[str], snapshot: dict[str, Any]) -> int:
    dec = BinanceDecoder("btcusdt")
    decode, tick = dec.decode, dec.tick
    book = OrderBook("btcusdt")
    book.on_snapshot(snapshot["lastUpdateId"],
                     [(float(p), float(q)) for p, q in snapshot["bids"]],
                     [(float(p), float(q)) for p, q in snapshot["asks"]])
    eng = CandleEngine("btcusdt", ["1s", "1m", "5m", "15m", "1h"])
    batch: list[Tick] = []
    bars = 0
    for i, raw in enumerate(frames):
        m = decode(raw)
        if type(m) is TradeMsg:
            batch.append(tick(m, 1))
        elif type(m) is DepthMsg and not book.on_diff(m.U, m.u, m.b, m.a):
            book.on_snapshot(m.U - 1, (), ())  # keep going after the recording's own holes
        if i % BATCH == 0 and batch:
            bars += len(eng.on_ticks(batch))
            batch = []
    bars += len(eng.on_ticks(batch)) + len(eng.flush())
    return bars


def decode_only(frames: list[str], _: dict[str, Any]) -> int:
    decode = BinanceDecoder("btcusdt").decode
    n = 0
    for raw in frames:
        n += decode(raw).E & 1
    return n


def with_loads(loads: Callable[[str], Any]) -> Callable[[list[str], dict[str, Any]], int]:
    def run(frames: list[str], _: dict[str, Any]) -> int:
        n = 0
        for raw in frames:
            d = loads(raw)["data"]
            if d["e"] == "trade":
                n += int(d["t"]) & 1
                float(d["p"])
                float(d["q"])
                _ = (d["T"], d["m"])
            else:
                n += int(d["u"]) & 1
                _ = [(float(p), float(q)) for p, q in d["b"]]
                _ = [(float(p), float(q)) for p, q in d["a"]]
        return n
    return run


def ccxt_handler(frames: list[str], snapshot: dict[str, Any]) -> int:
    async def go() -> int:
        ex = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
        try:
            client = ex.client("wss://stream.binance.com:9443/stream/0")
            handle = ex.handle_message
            for raw in frames:
                handle(client, orjson.loads(raw))
            return len(ex.trades.get("BTC/USDT", []) or [])
        finally:
            await ex.close()
    return asyncio.run(go())


def measure(name: str, fn: Callable[[list[str], dict[str, Any]], int], frames: list[str],
            snapshot: dict[str, Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(frames, snapshot)
        best = min(best, time.perf_counter() - t0)
    rate = len(frames) / best
    print(f"{name:<44} {len(frames):>7} msgs  {best * 1e3:8.1f} ms  {rate:>12,.0f} msgs/s  "
          f"{best / len(frames) * 1e6:6.2f} us/msg")
    return rate


def normalize_only(frames: list[str], _: dict[str, Any]) -> int:
    dec = BinanceDecoder("btcusdt")
    decode, tick = dec.decode, dec.tick
    n = 0
    for raw in frames:
        m = decode(raw)
        if type(m) is TradeMsg:
            n += tick(m, 1).side
    return n


def run_set(title: str, frames: list[str], snapshot: dict[str, Any], repeats: int) -> None:
    print(f"-- {title}: {len(frames)} frames, best of {repeats}")
    native_rate = measure("native: decode+ticks+book+candles", native, frames, snapshot, repeats)
    measure("native: decode+ticks", normalize_only, frames, snapshot, repeats)
    measure("native: decode only (msgspec)", decode_only, frames, snapshot, repeats)
    measure("orjson.loads + field access", with_loads(orjson.loads), frames, snapshot, repeats)
    measure("json.loads + field access", with_loads(json.loads), frames, snapshot, repeats)
    ccxt_rate = measure("ccxt.pro binance handle_message (+orjson)", ccxt_handler, frames,
                        snapshot, max(1, repeats // 2))
    print(f"native / ccxt.pro = {native_rate / ccxt_rate:.1f}x")


def main(repeats: int = 5) -> None:
    frames, snapshot = load()
    trades = [f for f in frames if "@trade" in f[:40]]
    print(f"recorded BTCUSDT 2024-08-08/09: {len(trades)} trade frames (~170 B), "
          f"{len(frames) - len(trades)} depth diffs (~1.6 kB)")
    run_set("trade frames", trades, snapshot, repeats)
    run_set("all frames (trades + depth diffs)", frames, snapshot, repeats)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
