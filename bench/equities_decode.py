"""Decode speed of the equity connectors' parsers on recorded-format frames (messages/s).

Alpaca: JSON frames of 20 real SPY trades/quotes (2013-10-08, quotes placed around trades).
Kite: binary frames of 1 and 10 full-mode packets built from the documented layout.
Run: ``.venv/bin/python bench/equities_decode.py``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.alpaca_server import rfc3339, spy_trades, with_quotes
from fakes.kite_server import RELIANCE, frame, pack, synthetic_day

from aetherion.ingest.alpaca import AlpacaParser
from aetherion.ingest.kite import KiteParser


def alpaca() -> None:
    msgs = [{**m, "t": rfc3339(m["t"])} for m in with_quotes(spy_trades(limit=50_000))]
    frames = [json.dumps(msgs[i:i + 20]) for i in range(0, len(msgs), 20)]
    p = AlpacaParser("spy", "SPY")
    t0 = time.perf_counter()
    n = 0
    for f in frames:
        ticks, _ = p.feed(f, 0)
        n += len(ticks)
    dt = time.perf_counter() - t0
    print(f"alpaca: {len(msgs) / dt:,.0f} messages/s ({n:,} ticks, {len(frames):,} frames)")


def kite(per_frame: int) -> None:
    states = synthetic_day(60_000)
    frames = [frame([pack(s, "full") for s in states[i:i + per_frame]])
              for i in range(0, len(states), per_frame)]
    p = KiteParser("reliance", RELIANCE)
    t0 = time.perf_counter()
    for f in frames:
        p.feed(f, 0)
    dt = time.perf_counter() - t0
    print(f"kite ({per_frame} full packets a frame): {len(states) / dt:,.0f} packets/s")


if __name__ == "__main__":
    alpaca()
    kite(1)
    kite(10)
