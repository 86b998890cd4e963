"""``aetherion simulate``: a simulated market with its true regime, written to a file.

The market is :class:`~aetherion.ingest.simulator.SimulatedMarket`, the process behind the default
live markets (its module docstring has the regimes). Candles come from its bar generator (the one
that makes the warm-up history, statistically the bars its trades would build), so years of bars
take seconds; trades come from the per-trade process, about 250,000 a second, so they suit
spans of hours. Output columns:

- candles: ``ts`` (the bar's open time, epoch ms, a multiple of the timeframe), ``open, high, low,
  close, volume, buy_volume, sell_volume, trade_count, true_regime`` (in force at the bar's close);
- trades: ``ts, price, size, side`` (``buy``/``sell``), ``trade_id, true_regime``.

Both are what ``aetherion replay`` reads. The span is ``--bars`` bars of ``--timeframe`` from
``--start`` rounded down to the timeframe. A seed gives the same file every time. Stdout gets one
JSON line (rows, span, share of rows per true regime); bad arguments one line on stderr, status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aetherion.domain import REGIMES, TIMEFRAME_MS, VENUES

if TYPE_CHECKING:
    import polars as pl

    from aetherion.config import Settings

__all__ = ["SimulateError", "SimulateOptions", "add_parser", "options", "run", "simulate"]

DEFAULT_START: Final = "2024-01-01T00:00:00Z"
DEFAULT_BARS: Final = 1440
MAX_MINUTES: Final = 5_000_000  # candles: about 9.5 years, whatever the timeframe
MAX_TRADES: Final = 5_000_000  # a day at the default 50/s, about 20 s
MARKET_ID: Final = "sim"
SUFFIXES: Final = (".csv", ".csv.gz", ".parquet")
_TRADE_CHUNK_MS: Final = 600_000


class SimulateError(ValueError):
    """A bad argument or an unwritable file: the message is the one line the user sees."""


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    out: Path
    kind: str = "candles"
    timeframe: str = "1m"
    bars: int = DEFAULT_BARS
    seed: int = 7
    rate: float = 50.0
    venue: str = "crypto"
    start_ms: int = 1_704_067_200_000  # DEFAULT_START
    start_price: float = 100.0
    regime_seconds: float = 1800.0

    @property
    def span_ms(self) -> tuple[int, int]:
        ms = TIMEFRAME_MS[self.timeframe]
        start = self.start_ms - self.start_ms % ms
        return start, start + self.bars * ms


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``simulate`` subcommand. Values are checked by :func:`options` (one line on error)."""
    p = sub.add_parser(
        "simulate", help="write a simulated market with its true regime",
        description="Write a simulated market (the default live markets' process) with its true "
                    "regime to OUT, then a JSON summary line to stdout. Candles are built "
                    "without generating each trade and suit long spans (40,000 1m candles take "
                    "about a second); trades are generated one by one (about 0.25 M/s, at most "
                    f"{MAX_TRADES:,}) and suit spans of hours.")
    p.add_argument("out", type=Path, metavar="OUT", help="FILE.csv, FILE.csv.gz or FILE.parquet")
    p.add_argument("--kind", default="candles", metavar="{candles,trades}",
                   help="what to write (default %(default)s)")
    p.add_argument("--timeframe", default="1m", metavar="TF",
                   help=f"bar length, one of {', '.join(TIMEFRAME_MS)} (default %(default)s)")
    p.add_argument("--bars", default=str(DEFAULT_BARS), metavar="N",
                   help="span in bars of --timeframe (default %(default)s); trades cover it too")
    p.add_argument("--seed", metavar="S", help="random seed (default AETHERION_SIM_SEED, 7)")
    p.add_argument("--rate", metavar="TRADES_PER_S",
                   help="trades a second (default AETHERION_SIM_RATE, 50)")
    p.add_argument("--venue", default="crypto", metavar="{crypto,us,nse}",
                   help="volatility scale of the venue (default %(default)s)")
    p.add_argument("--start", default=DEFAULT_START, metavar="ISO-or-epoch-ms",
                   help="first bar's time, rounded down to the timeframe (default %(default)s)")
    p.add_argument("--start-price", default="100", metavar="P", help="default %(default)s")


def _number(name: str, text: str, kind: type[int] | type[float], low: float,
            high: float) -> Any:
    try:
        v = kind(text.strip()) if text.strip().isascii() else kind("x")
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SimulateError(f"simulate: {name} {text!r} is not {what}") from None
    if not (low <= v <= high) or not math.isfinite(v):
        raise SimulateError(f"simulate: {name} must be between {low:g} and {high:g}, not {text}")
    return v


def _start_ms(text: str) -> int:
    s = text.strip()
    if s.isascii() and s.isdigit():
        ms = int(s)
    else:
        try:
            at = datetime.fromisoformat(s)
        except ValueError:
            raise SimulateError(f"simulate: --start {text!r} is neither epoch milliseconds nor "
                                "an ISO-8601 time") from None
        ms = int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)
    if not 0 <= ms < 253_402_300_800_000:  # 1970 to 9999
        raise SimulateError(f"simulate: --start {text!r} is outside 1970-9999")
    return ms


def _choice(name: str, value: str, known: tuple[str, ...] | list[str]) -> str:
    if value not in known:
        raise SimulateError(f"simulate: {name} {value!r} is not one of {', '.join(known)}")
    return value


def options(args: argparse.Namespace, settings: Settings) -> SimulateOptions:
    """Checked options from the command line, defaults from the settings."""
    out: Path = args.out
    if not out.name.lower().endswith(SUFFIXES):
        raise SimulateError(f"simulate: OUT {str(out)!r} must end in {', '.join(SUFFIXES)}")
    if not out.parent.is_dir():
        raise SimulateError(f"simulate: no directory {str(out.parent)!r} for OUT")
    o = SimulateOptions(
        out=out, kind=_choice("--kind", args.kind, ("candles", "trades")),
        timeframe=_choice("--timeframe", args.timeframe, list(TIMEFRAME_MS)),
        bars=_number("--bars", args.bars, int, 1, MAX_MINUTES),
        seed=settings.sim_seed if args.seed is None else _number("--seed", args.seed, int,
                                                                 -2**63, 2**63 - 1),
        rate=settings.sim_rate if args.rate is None else _number("--rate", args.rate, float,
                                                                 1e-6, 100_000),
        venue=_choice("--venue", args.venue, VENUES), start_ms=_start_ms(args.start),
        start_price=_number("--start-price", args.start_price, float, 1e-6, 1e12),
        regime_seconds=settings.sim_regime_seconds)
    start, end = o.span_ms
    if o.kind == "candles" and (end - start) / 60_000 > MAX_MINUTES:
        raise SimulateError(f"simulate: {o.bars} bars of {o.timeframe} exceed "
                            f"{MAX_MINUTES:,} minutes; use fewer --bars")
    if o.kind == "trades" and (n := o.rate * (end - start) / 1000) > MAX_TRADES:
        raise SimulateError(f"simulate: about {n:,.0f} trades exceed {MAX_TRADES:,}; use fewer "
                            "--bars, a lower --rate, or --kind candles")
    return o


def _market(o: SimulateOptions) -> Any:
    from aetherion.ingest.simulator import SimulatedMarket

    return SimulatedMarket(MARKET_ID, o.venue, o.start_price, o.seed, o.regime_seconds, o.rate)


def candles_frame(o: SimulateOptions) -> pl.DataFrame:
    import numpy as np
    import polars as pl

    b = _market(o).candles(o.timeframe, o.bars, o.start_ms)
    return pl.DataFrame({
        "ts": b.open_time, "open": b.open, "high": b.high, "low": b.low, "close": b.close,
        "volume": b.volume, "buy_volume": b.buy_volume, "sell_volume": b.sell_volume,
        "trade_count": b.trade_count, "true_regime": np.asarray(REGIMES)[b.regime],
    })


def trades_frame(o: SimulateOptions) -> pl.DataFrame:
    import polars as pl

    market = _market(o)
    start, end = o.span_ms
    chunks: list[pl.DataFrame] = []
    for t in range(start, end, _TRADE_CHUNK_MS):
        ticks, regimes = market.labelled_trades(t, min(t + _TRADE_CHUNK_MS, end), o.rate)
        chunks.append(pl.DataFrame({
            "ts": [k.ts for k in ticks], "price": [k.price for k in ticks],
            "size": [k.size for k in ticks],
            "side": ["buy" if k.side > 0 else "sell" for k in ticks],
            "trade_id": [k.trade_id for k in ticks], "true_regime": regimes,
        }, schema={"ts": pl.Int64, "price": pl.Float64, "size": pl.Float64, "side": pl.Utf8,
                   "trade_id": pl.Utf8, "true_regime": pl.Utf8}))
    return pl.concat(chunks)


def _write(df: pl.DataFrame, out: Path) -> None:
    try:
        if out.name.lower().endswith(".parquet"):
            df.write_parquet(out)
        elif out.name.lower().endswith(".gz"):
            df.write_csv(out, compression="gzip")
        else:
            df.write_csv(out)
    except OSError as e:
        raise SimulateError(f"simulate: cannot write {out}: {e.strerror or e}") from None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def simulate(o: SimulateOptions) -> dict[str, Any]:
    """Write the file; returns the summary."""
    t0 = time.perf_counter()
    df = candles_frame(o) if o.kind == "candles" else trades_frame(o)
    _write(df, o.out)
    start, end = o.span_ms
    counts = dict(df["true_regime"].value_counts().iter_rows())
    n = max(len(df), 1)
    return {
        "out": str(o.out), "kind": o.kind, "rows": len(df), "timeframe": o.timeframe,
        "start": _iso(start), "end": _iso(end), "span_hours": round((end - start) / 3.6e6, 3),
        "seed": o.seed, "venue": o.venue, "rate": o.rate,
        "true_regime_share": {r: round(counts.get(r, 0) / n, 4) for r in REGIMES},
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``aetherion simulate``: raises :class:`SimulateError` for a bad argument."""
    import structlog

    summary = simulate(options(args, settings))
    structlog.get_logger(__name__).info("simulated market written", out=summary["out"],
                                        rows=summary["rows"])
    print(json.dumps(summary), flush=True)
    return 0
