"""``aetherion replay``: the live pipeline over recorded trades or candles, in event time.

The input (files, their checks, the truth column) is read by :mod:`aetherion.recorded`.

Output rows: ``regime_raw`` and ``confidence_raw`` are the replay timeframe's own filtered raw
regime at that bar and its probability (``unknown`` and 0.0 while that timeframe has no model or
its inputs warm up); ``regime``, ``confidence`` and ``strategy`` are the fused, stable ones the
decision used. ``exposure`` is the signed fraction of capital held after the bar's decision.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from aetherion.config import MarketConfig, Settings
from aetherion.domain import TIMEFRAME_MS, Bar
from aetherion.pipeline import ListSink, build_pipeline
from aetherion.pipeline.replay import TRUE_REGIME, ReplayResult, result_rows
from aetherion.recorded import InputError, Loaded, load

__all__ = ["OUTPUT_COLUMNS", "InputError", "Loaded", "ReplayResult", "load", "replay"]

OUTPUT_COLUMNS = (
    "ts", "open", "high", "low", "close", "volume", "atr", "volatility", "volume_delta",
    "regime_raw", "confidence_raw", "regime", "confidence", "strategy", "action", "position",
    "exposure",
)
CHUNK = 50_000  # trades per pipeline call


# ---- running --------------------------------------------------------------------------------

def _spacing(ts: np.ndarray[Any, Any]) -> str:
    diffs = np.diff(ts)
    step = int(np.median(diffs)) if len(diffs) else TIMEFRAME_MS["1m"]
    for tf, ms in TIMEFRAME_MS.items():
        if ms >= step * 0.9:
            return tf
    return "1d"


def replay(loaded: Loaded, settings: Settings, market_id: str = "replay",
           timeframe: str | None = None, progress: bool = False) -> ReplayResult:
    df = loaded.frame
    ts = df["ts"].to_numpy()
    if timeframe is None:
        timeframe = _spacing(ts) if loaded.kind == "candles" else settings.finest_timeframe
    base = TIMEFRAME_MS[timeframe]
    tfs = [timeframe] + [t for t in settings.timeframes
                         if TIMEFRAME_MS[t] > base and TIMEFRAME_MS[t] % base == 0]
    s = settings.model_copy(update={
        "timeframes": tuple(tfs),
        "decision": settings.decision.model_copy(update={"timeframe": timeframe})})
    # any name goes: an id starts with a letter or digit ("_x", "(spy)" stopped the replay)
    safe = re.sub(r"[^a-z0-9_-]", "-", market_id.lower()).lstrip("-_")[:32] or "replay"
    market = MarketConfig(id=safe, venue="crypto", connector="simulator", symbol=market_id)
    sink = ListSink()
    pipe = build_pipeline(market, s, sink)
    t0 = time.perf_counter()
    n = len(df)
    if loaded.kind == "trades":
        price, size = df["price"].to_numpy(), df["size"].to_numpy()
        side = df["side"].to_numpy()
        for i in range(0, n, CHUNK):
            pipe.on_trades(ts[i:i + CHUNK], price[i:i + CHUNK], size[i:i + CHUNK],
                           side[i:i + CHUNK])
            if progress:
                _progress(i + CHUNK, n)
        pipe.flush()
    else:
        bars = _candles(df, market_id, timeframe, base, loaded.source)
        for i in range(0, len(bars), 1000):
            pipe.on_bars(bars[i:i + 1000])
            if progress:
                _progress(i + 1000, len(bars))
        pipe.flush()
    elapsed = time.perf_counter() - t0
    if progress:
        sys.stderr.write("\n")
    truth = _truth(df, base) if TRUE_REGIME in df.columns else None
    rows = result_rows(sink, timeframe, truth)
    trades = n if loaded.kind == "trades" else 0
    shares = Counter(r["regime"] for r in rows)
    summary = {
        "input_kind": loaded.kind, "timeframe": timeframe, "timeframes": tfs,
        "bars": len(rows), "trades": trades, "elapsed_s": round(elapsed, 3),
        "trades_per_s": round(trades / elapsed) if elapsed and trades else 0,
        "bars_per_s": round(len(rows) / elapsed) if elapsed else 0,
        "regime_share": {k: round(v / len(rows), 4) for k, v in sorted(shares.items())}
        if rows else {},
        "actions": dict(Counter(r["action"] for r in rows)),
        "transitions": len(sink.transitions),
        "models": {"active": sum(m.status == "active" for m in sink.models),
                   "rejected": sum(m.status != "active" for m in sink.models)},
        "unsorted_rows_sorted": loaded.unsorted,
        f"duplicate_{loaded.kind}_dropped": loaded.duplicates,
        "closes_dropped": loaded.dropped, "ranges_missing": loaded.no_range,
        "late_trades_dropped": pipe.candles.late_dropped,
    }
    return ReplayResult(market, rows, summary, sink)


def _candles(df: pl.DataFrame, market: str, timeframe: str, base: int,
             source: str) -> list[Bar]:
    ts = df["ts"].to_numpy()
    if np.any(ts % base):
        row = int(np.argmax(ts % base != 0))
        raise InputError(f"{source}: row {row + 2}, column ts: {int(ts[row])} is not on a "
                         f"{timeframe} boundary (pass --timeframe with the candles' spacing)")
    o, h, lo, c, v = (df[k].to_list() for k in ("open", "high", "low", "close", "volume"))
    return [Bar(market, timeframe, int(t), o[i], h[i], lo[i], c[i], v[i], 0.0, 0.0, 0, True,
                first_ts=int(t), last_ts=int(t) + base - 1, sided=False)
            for i, t in enumerate(ts)]


def _truth(df: pl.DataFrame, base: int) -> dict[int, str]:
    """The true regime of each bar (open time): its candle's, or its last trade's."""
    last = (df.select((pl.col("ts") // base * base).alias("open_time"), TRUE_REGIME)
            .group_by("open_time", maintain_order=True).last())
    return dict(zip(last["open_time"].to_list(), last[TRUE_REGIME].to_list(), strict=True))


def _progress(done: int, total: int) -> None:
    pct = min(done, total) / total
    bar = "#" * int(pct * 40)
    sys.stderr.write(f"\r[{bar:<40}] {pct:6.1%}")
    sys.stderr.flush()


def write_rows(rows: list[dict[str, Any]], out: Path) -> None:
    df = pl.DataFrame(rows, infer_schema_length=None)
    if out.suffix == ".parquet":
        df.write_parquet(out)
    else:
        df.write_csv(out)


def summary_line(summary: dict[str, Any]) -> str:
    return orjson.dumps(summary, option=orjson.OPT_SERIALIZE_NUMPY).decode()
