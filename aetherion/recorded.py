"""Recorded market data for a replay: trades or candles from CSV or Parquet files, checked.

Input: CSV or Parquet (``.gz``/``.zip`` accepted). Trades: ``ts, price, size`` and optionally
``side`` (buy/sell) and ``trade_id``; candles: ``ts, open, high, low, close`` and optionally
``volume`` (0 when absent). ``ts`` is ISO-8601 or epoch milliseconds, UTC (a column of epoch
seconds, microseconds or nanoseconds is recognised by its range and converted; a column of
dates written month/day/year, day/month/year or day.month.year, as spreadsheets and some
downloads write them, is read as such: ``_dates``; so is a column of midnights with a UTC
offset, as yfinance writes daily bars: ``LOCAL_MIDNIGHT``); without a ``ts``
column, one named ``date``, ``time``, ``timestamp``... (any case) is taken. With an ``Adj Close``
column (Yahoo's) the prices are scaled by ``Adj Close / Close`` row by row. NASDAQ.com's
``Close/Last`` and Investing.com's ``Price`` (beside Open, High and Low) are the close; numbers
written with thousands commas or a currency sign (``21,082.95``, ``$129.93``) are read as
numbers, a volume of ``--`` or nothing as 0, and dates like ``May 25, 2017`` as dates. A file
whose header is separated by ``;`` (a spreadsheet's export in a European locale) is read with
``;`` between fields and ``1.234,56`` as 1234.56.
QuantConnect Lean / AlgoSeek files (headerless; prices in 1/10,000 dollars; trade times in
milliseconds since New York midnight, the date in the file name) are recognised too. Unsorted
timestamps are sorted (stably) and counted; a repeated ``trade_id`` is dropped and counted, and
of candles written twice for one time the later row is kept, the other dropped and counted.

Input rules. A bad file ends the replay with one line naming the file and, where it applies, the
row (the line number, the header being row 1) and the column; values shown are cut to 80
characters. ``ts`` must parse (ASCII digits or ISO-8601) and lie within years 1-9999; prices
(trades' ``price``, candles' ``open``/``high``/``low``/``close``) must be finite and above 0;
numeric columns must be numbers, not nested (list/struct) values. Memory is bounded before
parsing: a file is read (and ``.gz``/``.zip`` decompressed) in 1 MiB chunks, refused past
``AETHERION_REPLAY_MAX_BYTES`` bytes (decompressed; default 2 GiB), past a CSV line longer than
``MAX_LINE`` (1 MiB), or when an archive expands more than ``MAX_RATIO`` (100) times its
compressed size beyond the first 16 MiB (recorded market data expands 3-10 times; a bomb hundreds
of times: decompress a genuine one yourself). A Parquet file whose rows times columns times 8
bytes exceed the limit is refused from its metadata, before it is read.

Close-only candles: ``ts, close`` (no ``price``/``size``) are candles with open = high = low =
close. Features that need a range then use what the closes give: the true range is
``|close - previous close|`` (so the ATR is the mean absolute close-to-close move) and the one-bar
log range ``ln(high / low)`` is 0 on every bar — it carries no information there. ``column`` (the
CLI's ``--column TICKER``) reads one column of a wide file of closes (a date column named
``Date``, ``ts``, ``observation_date``, ``datetime``, ``timestamp`` or ``time``, any case, then
one column per ticker; a file of a date column and one other needs no ``column``): the date
becomes ``ts``, the ticker's values ``close``. In close-only data a row whose close is missing
(empty, ``.``, ``NA``, ``NaN``, ``null``...) or not above 0 (a futures price can go negative) is
dropped and counted (``closes_dropped`` in the summary): such series mark holidays and gaps that
way. Candles with open, high and low are read the same way where a row has no usable close
(Yahoo's daily files give a holiday a row of ``null``): dropped and counted. A row with a close
but without a usable open, high or low (missing, or not above 0: Yahoo's ``^GSPC`` and ``^DJI``
give an open of 0 from 1962 to 1982) is read as that close alone, open = high = low = close, and
counted (``ranges_missing`` in the summary). A value that is not a number is still an error.

Truth: a ``true_regime`` column (trades or candles; bull, bear, sideways or crisis, any case) is
carried to the output. Each row gets that candle's value, or for trades the value of the last
trade of the bar (by open time of the replay timeframe); without the column rows have none.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from aetherion.config import Settings
from aetherion.domain import BUY, REGIMES, SELL, TIMEFRAME_MS, UNKNOWN_SIDE
from aetherion.pipeline.replay import TRUE_REGIME

__all__ = ["InputError", "Loaded", "load"]

TRADE_COLUMNS = ("ts", "price", "size")
CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "volume")
RANGE_COLUMNS = ("open", "high", "low")  # candles without them are close-only
# the date column of a wide file (``column``), any case; FRED's downloads say observation_date
DATE_COLUMNS = ("date", "ts", "observation_date", "datetime", "timestamp", "time")
NEW_YORK = ZoneInfo("America/New_York")
MAX_BYTES: int = Settings.model_fields["replay_max_bytes"].default
MAX_LINE = 1 << 20  # bytes in one CSV line; also the read chunk
MAX_RATIO, RATIO_FROM = 100, 16 << 20  # an archive expanding more (past 16 MiB) is a bomb
TS_MIN, TS_MAX = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31, ms
PRICES = {"price", "open", "high", "low", "close"}
ADJ_CLOSE = "adj close"  # Yahoo's split- and dividend-adjusted close (names lowercased)
DATE_FORMATS = ("%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y", "%b %d, %Y")  # read when ISO-8601 does not
DATED = r"^([0-9]{1,2}[/.][0-9]{1,2}[/.]|[A-Za-z]{3} [0-9]{1,2}, )[0-9]{4}$"  # one of those
#: midnight with a UTC offset, as yfinance writes a daily bar ("2020-01-02 00:00:00-05:00"): when
#: every row is one, each is read as its date (the offset would put the bar at 05:00 UTC, off a
#: day's boundary, or for an offset east of UTC on the day before)
LOCAL_MIDNIGHT = r"^\d{4}-\d{2}-\d{2}[ T]00:00(?::00(?:\.0+)?)?[+-]\d{2}:?\d{2}$"
MISSING = ["", ".", "na", "n/a", "#n/a", "nan", "null", "none", "-", "--"]  # a close-only gap
# 1,234.5 or $129.93 (Investing.com's and NASDAQ.com's downloads): the commas and the currency
# sign go; anything else with a comma (1.234,5; 1,23) is not read as a number
GROUPED = r"^[-+]?[$€£¥₹]?[-+]?([0-9]{1,3}(,[0-9]{3})+|[0-9]+)(\.[0-9]*)?$"
# other names of the close: NASDAQ.com's Close/Last; Investing.com's Price beside Open/High/Low
CLOSE_NAMES = ("close/last", "price")
USED = {*TRADE_COLUMNS, *CANDLE_COLUMNS, "side", "trade_id", TRUE_REGIME, ADJ_CLOSE}


class InputError(ValueError):
    """Bad input: the message names the file, and the row and column where it applies."""


@dataclass
class Loaded:
    kind: str  # "trades" | "candles"
    frame: pl.DataFrame  # ts (Int64 epoch ms) and the kind's columns, sorted by ts
    unsorted: int = 0
    duplicates: int = 0  # rows dropped for a repeated trade_id, or candles for a repeated ts
    source: str = "input"  # the file, for errors found later
    dropped: int = 0  # rows without a usable close (``_usable_closes``) or with no price
    no_range: int = 0  # candle rows with a close but no usable open, high or low: closes only


# ---- reading --------------------------------------------------------------------------------

def _short(text: str, width: int = 80) -> str:
    """``text`` cut to about ``width`` characters: an error never prints a huge value."""
    return text if len(text) <= width else text[:width] + "…"


def _cut(value: object) -> str:
    return _short(repr(value))


def _names(columns: list[str]) -> str:
    return _short(", ".join(columns))


def _raw_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, decompressed in chunks within the bounds of the module doc."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=f) as g:
                    return _capped(path, g.read, size, max_bytes)
            if path.suffix == ".zip":
                with zipfile.ZipFile(f) as z:
                    member = next((i for i in z.infolist() if not i.is_dir()), None)
                    if member is None:
                        raise InputError(f"{path}: the zip archive is empty")
                    with z.open(member) as m:
                        return _capped(path, m.read, member.compress_size, max_bytes)
            if size > max_bytes:
                raise InputError(f"{path}: {size} bytes, more than AETHERION_REPLAY_MAX_BYTES "
                                 f"({max_bytes})")
            return _capped(path, f.read, None, max_bytes)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError,
                NotImplementedError) as e:  # zipfile: encrypted, unknown method
            what = f"corrupt {path.suffix[1:]} file" if path.suffix in (".gz", ".zip") \
                else "cannot read"
            raise InputError(f"{path}: {what} ({_short(str(e))})") from None


def _capped(path: Path, read: Callable[[int], bytes], packed: int | None,
            max_bytes: int) -> bytes:
    """``read`` in ``MAX_LINE`` chunks: at most ``max_bytes``, at most ``MAX_RATIO``
    times ``packed`` (the compressed size) past ``RATIO_FROM``, no text line over ``MAX_LINE``."""
    text = not _inner_name(path).endswith(".parquet")
    bomb = max_bytes if packed is None else max(RATIO_FROM, MAX_RATIO * packed)
    chunks: list[bytes] = []
    size = line_start = 0
    while chunk := read(MAX_LINE):
        if text:  # a chunk is no longer than a line: only a line across chunks can be too long
            first = chunk.find(b"\n")
            if size + (first if first >= 0 else len(chunk)) - line_start > MAX_LINE:
                row = sum(c.count(b"\n") for c in chunks) + 1
                raise InputError(f"{path}: row {row}: a line longer than {MAX_LINE} bytes")
            if first >= 0:
                line_start = size + chunk.rfind(b"\n") + 1
        size += len(chunk)
        if size > max_bytes:
            raise InputError(f"{path}: more than AETHERION_REPLAY_MAX_BYTES ({max_bytes}) "
                             "bytes decompressed")
        if size > bomb:
            raise InputError(f"{path}: expands more than {MAX_RATIO} times its compressed "
                             f"size ({packed} bytes): refused as a decompression bomb "
                             "(decompress it yourself if it is genuine)")
        chunks.append(chunk)
    return b"".join(chunks)


def _inner_name(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".zip")


EURO_NUMBER = r"^[-+]?[0-9]{1,3}(\.[0-9]{3})*,[0-9]+$|^[-+]?[0-9]+,[0-9]+$"  # 1.234,56
LEAN_BAR = re.compile(rb"^\d{8} \d\d:\d\d,")
LEAN_TRADE = re.compile(rb"^\d+,\d+,\d+")


def load(path: Path, kind: str | None = None, column: str | None = None,
         max_bytes: int = MAX_BYTES) -> Loaded:
    """Read a trades or candles file into a sorted frame with epoch-ms ``ts``; ``column``: the
    candles of one ticker of a wide file of closes; ``max_bytes``: AETHERION_REPLAY_MAX_BYTES
    (see the module doc)."""
    data = _raw_bytes(path, max_bytes)
    try:
        return _load(path, data, kind, column, max_bytes)
    except InputError:
        raise
    except (pl.exceptions.PolarsError, ArithmeticError, ValueError) as e:  # not foreseen
        raise InputError(f"{path}: cannot parse ({_short(_first_line(e))})") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _load(path: Path, data: bytes, kind: str | None, column: str | None,
          max_bytes: int) -> Loaded:
    head = data[:200]
    if LEAN_BAR.match(head):
        return _finish(path, _lean_bars(path, data), "candles", first=1)
    if LEAN_TRADE.match(head) and kind != "candles":
        return _finish(path, _lean_trades(path, data), "trades", first=1)
    try:
        if _inner_name(path).endswith(".parquet"):
            df = _parquet(path, data, max_bytes)
        elif b";" in (first := data.split(b"\n", 1)[0]) and b"," not in first:
            df = _european(pl.read_csv(io.BytesIO(data), separator=";", infer_schema=False))
        else:
            df = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except InputError:
        raise
    except Exception as e:  # polars raises several kinds for a corrupt file
        raise InputError(f"{path}: cannot parse ({_short(_first_line(e))})") from None
    return _checked(path, df, kind, column)


def _european(df: pl.DataFrame) -> pl.DataFrame:
    """A file as a spreadsheet in a European locale writes it: ``;`` between fields and
    ``1.234,56`` for a number. Such numbers are rewritten as ``1234.56``; other text is left."""
    return df.with_columns(
        pl.when(pl.col(c).str.strip_chars().str.contains(EURO_NUMBER))
        .then(pl.col(c).str.strip_chars().str.replace_all(".", "", literal=True)
              .str.replace(",", ".", literal=True))
        .otherwise(pl.col(c)).alias(c) for c in df.columns if df[c].dtype == pl.Utf8)


def _checked(path: Path, df: pl.DataFrame, kind: str | None, column: str | None) -> Loaded:
    """The columns replay reads, parsed and checked, from a file's table."""
    if column is not None:
        if kind == "trades":
            raise InputError(f"{path}: --column reads candles (closes), not trades")
        df, kind = _one_column(path, df, column), "candles"
    df = df.rename({c: c.strip().lower() for c in df.columns})
    dates = [c for c in df.columns if c in DATE_COLUMNS]
    if "ts" not in df.columns and len(dates) == 1:  # not Date and Time in two columns
        df = df.rename({dates[0]: "ts"})  # Yahoo's Date,Open,High,Low,Close,Adj Close,Volume
    alias = next((c for c in CLOSE_NAMES if c in df.columns), None)
    if alias and kind != "trades" and "close" not in df.columns and "size" not in df.columns \
            and set(RANGE_COLUMNS) <= set(df.columns):  # Date,Close/Last,Volume,Open,High,Low
        df = df.rename({alias: "close"})
    if kind != "trades" and df.columns[0] == "ts" and len(df.columns) == 2 \
            and df.columns[1] not in USED:  # one series of closes: FRED's observation_date,WTI
        df = df.rename({df.columns[1]: "close"})
    _flat(path, df)
    have = set(df.columns)
    if kind is None:
        close_only = "close" in have and not have & {"price", "size"}
        kind = "candles" if set(CANDLE_COLUMNS) <= have or close_only else "trades"
    if kind == "trades":
        return _finish(path, _with_truth(path, df, _trade_frame(path, df)), kind)
    if "close" not in have:
        return _finish(path, _with_truth(path, df, _candle_frame(path, df)), kind)  # says so
    prices = [c for c in (*RANGE_COLUMNS, "close") if c in have]
    drop = ~_usable_closes(df["close"])  # Yahoo's files give a holiday a row of nulls
    if len(prices) > 1:
        # a close without its range (Yahoo's ^GSPC and ^DJI open at 0 in 1962-1982): that row
        # is read as a close alone, o = h = l = c, as close-only data is
        no_range = ~drop & pl.DataFrame([~_usable_closes(df[c]) for c in prices[:-1]]).select(
            pl.any_horizontal(pl.all())).to_series()
        df = df.with_columns(pl.when(no_range).then(pl.col("close").cast(df[c].dtype))
                             .otherwise(c).alias(c) for c in prices[:-1])
    # dropped rows get placeholders and go after parsing, so later errors keep their rows
    df = df.with_columns(pl.when(drop).then(pl.lit(1).cast(df[c].dtype)).otherwise(c).alias(c)
                         for c in (*prices, "volume", ADJ_CLOSE) if c in have)
    frame = _with_truth(path, df, _candle_frame(path, df)).filter(~drop)
    return _finish(path, frame, kind, dropped=len(df) - len(frame),
                   no_range=int(no_range.sum()) if len(prices) > 1 else 0)


def _with_truth(path: Path, df: pl.DataFrame, cols: dict[str, pl.Series]) -> pl.DataFrame:
    if TRUE_REGIME in df.columns:
        cols[TRUE_REGIME] = _true_regimes(path, df[TRUE_REGIME])
    return pl.DataFrame(cols)


def _parquet(path: Path, data: bytes, max_bytes: int) -> pl.DataFrame:
    """A Parquet file, refused from its metadata when it would not fit in ``max_bytes``."""
    width = len(pl.read_parquet_schema(io.BytesIO(data)))
    rows = pl.scan_parquet(io.BytesIO(data)).select(pl.len()).collect().item()
    if rows * max(width, 1) * 8 > max_bytes:
        raise InputError(f"{path}: {rows} rows of {width} columns would take more than "
                         f"AETHERION_REPLAY_MAX_BYTES ({max_bytes}) bytes")
    return pl.read_parquet(io.BytesIO(data))


def _flat(path: Path, df: pl.DataFrame) -> None:
    """The columns replay reads hold values, not lists or structs (Parquet)."""
    for c in df.columns:
        if c in USED and df[c].dtype.is_nested():
            raise InputError(f"{path}: row 2, column {c}: {df[c].dtype} values, not one value "
                             "a row")


def _parsed(path: Path, df: pl.DataFrame, kind: str,
            need: tuple[str, ...]) -> dict[str, pl.Series]:
    """``ts`` and the numeric columns ``need[1:]``, parsed; a missing one is an InputError."""
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} for {kind} "
                         f"(has: {_names(df.columns)})")
    return {"ts": _ts(path, df["ts"]),
            **{c: _floats(path, df[c], positive=c in PRICES) for c in need[1:]}}


def _trade_frame(path: Path, df: pl.DataFrame) -> dict[str, pl.Series]:
    cols = _parsed(path, df, "trades", TRADE_COLUMNS)
    cols["side"] = _sides(path, df["side"]) if "side" in df.columns else pl.Series(
        "side", [UNKNOWN_SIDE] * len(df), dtype=pl.Int8)
    if "trade_id" in df.columns:
        cols["trade_id"] = df["trade_id"].cast(pl.Utf8)
    return cols


def _candle_frame(path: Path, df: pl.DataFrame) -> dict[str, pl.Series]:
    """``ts, close``; open, high and low all or none (none: each is the close); volume 0 when
    absent. With Yahoo's ``Adj Close`` the prices are scaled by adjusted / close, row by row:
    a split is then no crash, and a dividend no fall."""
    have = set(df.columns)
    if "volume" in have:  # NASDAQ.com writes an index's volume as --
        df = df.with_columns(pl.when(_missing(df["volume"])).then(pl.lit(0).cast(
            df["volume"].dtype)).otherwise(pl.col("volume")).alias("volume"))
    ranged = RANGE_COLUMNS if have & set(RANGE_COLUMNS) else ()
    cols = _parsed(path, df, "candles",
                   ("ts", *ranged, "close", *(("volume",) if "volume" in have else ())))
    if ADJ_CLOSE in have:
        adj = _floats(path, df[ADJ_CLOSE], positive=True)
        factor = adj / cols["close"]
        for c in (*ranged, "close"):
            cols[c] = (cols[c] * factor).alias(c)
    for c in RANGE_COLUMNS:
        cols.setdefault(c, cols["close"].alias(c))
    cols.setdefault("volume", pl.Series("volume", [0.0] * len(df), dtype=pl.Float64))
    return cols


def _usable_closes(s: pl.Series) -> pl.Series:
    """Close-only series (free daily data) mark a day without a price as empty, ``.``, ``NA``
    or ``NaN``, and some (futures, spreads) go to or below 0, where a log return has no
    meaning: those rows are dropped and counted. Anything else that is not a number still stops
    the replay."""
    if s.dtype.is_numeric():
        v = s.cast(pl.Float64)
        return v.is_not_null() & v.is_finite() & (v > 0)
    v = _numbers(s.cast(pl.Utf8))
    return ~(_missing(s) | (v.is_not_null() & (~v.is_finite() | (v <= 0))))


def _missing(s: pl.Series) -> pl.Series:
    """Where a column holds no value: null, NaN, or one of the ``MISSING`` marks."""
    if s.dtype.is_numeric():
        return s.is_null() | s.cast(pl.Float64).is_nan()
    return s.is_null() | s.cast(pl.Utf8).str.strip_chars().str.to_lowercase().is_in(MISSING)


def _one_column(path: Path, df: pl.DataFrame, column: str) -> pl.DataFrame:
    """``ts`` and ``close`` from a wide file's date column and ``column``."""
    date = next((c for c in df.columns if c.strip().lower() in DATE_COLUMNS), None)
    if date is None:
        raise InputError(f"{path}: --column needs a date column named Date, ts, "
                         "observation_date, datetime, timestamp or time "
                         f"(has: {_names(df.columns)})")
    tickers = [c for c in df.columns if c != date]
    pick = next((c for c in tickers if c.strip() == column.strip()), None) or next(
        (c for c in tickers if c.strip().lower() == column.strip().lower()), None)
    if pick is None:
        raise InputError(f"{path}: no column {_cut(column)} (available: {_names(tickers)})")
    out = df.select(pl.col(date).alias("ts"), pl.col(pick).alias("close"))
    _flat(path, out)
    return out


def _true_regimes(path: Path, s: pl.Series) -> pl.Series:
    low = s.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
    known = low.is_in(list(REGIMES)).fill_null(False)
    if not known.all():
        row = int((~known).arg_max() or 0)
        raise InputError(f"{path}: row {row + 2}, column {TRUE_REGIME}: {_cut(s[row])} is not "
                         f"one of {', '.join(REGIMES)}")
    return low.alias(TRUE_REGIME)


def _bad_row(path: Path, col: str, original: pl.Series, parsed: pl.Series,
             first: int = 2) -> InputError:
    """``first``: the file row of the first value (2 after a header, 1 without)."""
    bad = (parsed.is_null() & original.is_not_null()) | original.is_null()
    row = int(bad.arg_max() or 0)
    return InputError(f"{path}: row {row + first}, column {col}: cannot parse "
                      f"{_cut(original[row])}")


def _floats(path: Path, s: pl.Series, positive: bool = False, first: int = 2) -> pl.Series:
    """Finite numbers (``positive``: above 0, as prices are)."""
    if s.dtype.is_numeric():
        out = s.cast(pl.Float64, strict=False)
    elif s.dtype == pl.Utf8:
        out = _numbers(s)
    else:
        raise InputError(f"{path}: row {first}, column {s.name}: {s.dtype} values, not numbers")
    if out.null_count():
        raise _bad_row(path, s.name, s, out, first)
    bad = ~out.is_finite() | (out <= 0) if positive else ~out.is_finite()
    if bad.any():
        row = int(bad.arg_max() or 0)
        why = "a price must be finite and above 0" if positive else "not a finite number"
        raise InputError(f"{path}: row {row + first}, column {s.name}: {_cut(s[row])}: {why}")
    return out


def _numbers(s: pl.Series) -> pl.Series:
    """Text as numbers, null where a value is not one. Plain numbers first; only where some are
    left unread (no regex on a plain column of millions), thousands commas and a currency sign
    are removed (``GROUPED``) and the column read again."""
    text = s.str.strip_chars()
    out = text.cast(pl.Float64, strict=False)
    if out.null_count() > text.null_count():
        out = pl.select(pl.when(text.str.contains(GROUPED)).then(
            text.str.replace_all(r"[,$€£¥₹]", "")).otherwise(text)).to_series().cast(
            pl.Float64, strict=False)
    return out.alias(s.name)


def _ts(path: Path, s: pl.Series) -> pl.Series:
    if s.dtype.is_integer():
        parsed, numbers = s.cast(pl.Int64, strict=False), True
    else:
        text = s.cast(pl.Utf8).str.strip_chars()
        is_int = text.str.contains(r"^-?[0-9]+$")  # \d would take Arabic-Indic digits too
        iso = text.str.to_datetime(time_zone="UTC", strict=False, time_unit="ms").dt.epoch("ms")
        parsed = pl.select(pl.when(is_int).then(text.cast(pl.Int64, strict=False))
                           .otherwise(iso)).to_series()
        numbers = bool(is_int.all())
        if text.str.contains(DATED).all() \
                and (dates := _dates(text)) is not None:  # not polars' guess: day first
            parsed = dates
        elif text.str.contains(LOCAL_MIDNIGHT).all():  # yfinance's daily: the exchange's date
            parsed = text.str.slice(0, 10).str.to_datetime(
                "%Y-%m-%d", time_zone="UTC", strict=False, time_unit="ms").dt.epoch("ms")
    if parsed.null_count():
        raise _bad_row(path, "ts", s, parsed)
    return (_in_ms(parsed) if numbers and len(parsed) else parsed).alias("ts")


def _dates(text: pl.Series) -> pl.Series | None:
    """A whole column of dates in one of ``DATE_FORMATS`` as epoch ms, or None. Where both
    month/day and day/month read every row (no day past the 12th), the order whose dates run
    one way more often is taken (Investing.com's files run backwards); on a tie, month first."""
    fits = []
    for fmt in DATE_FORMATS:
        d = text.str.to_datetime(fmt, time_zone="UTC", strict=False, time_unit="ms")
        if not d.null_count():
            fits.append(d.dt.epoch("ms"))
    return max(fits, key=lambda d: max(int((d.diff() > 0).sum()), int((d.diff() < 0).sum()))) \
        if fits else None


def _in_ms(ts: pl.Series) -> pl.Series:
    """Epoch numbers in milliseconds. A whole column of seconds (1973-5138: 1e8-1e11), of
    microseconds (past year 9999 in ms, up to 1e17) or of nanoseconds (beyond) is converted;
    anything else is taken as milliseconds (and checked for the years 1-9999 later)."""
    lo, hi = cast(int, ts.min()), cast(int, ts.max())
    if 10**8 <= lo and hi < 10**11:
        return ts * 1000
    if TS_MAX < lo and hi < 10**17:
        return ts // 1000
    if 10**17 <= lo:
        return ts // 1_000_000
    return ts


def _sides(path: Path, s: pl.Series) -> pl.Series:
    low = s.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
    out = low.replace_strict({"buy": BUY, "b": BUY, "sell": SELL, "s": SELL, "": UNKNOWN_SIDE},
                             default=None, return_dtype=pl.Int8)
    known = out.is_not_null() | low.is_null()
    if not known.all():
        row = int((~known).arg_max() or 0)
        raise InputError(f"{path}: row {row + 2}, column side: {_cut(s[row])} is not buy or sell")
    return out.fill_null(UNKNOWN_SIDE).alias("side")


def _lean_bars(path: Path, data: bytes) -> pl.DataFrame:
    df = pl.read_csv(io.BytesIO(data), has_header=False, infer_schema=False,
                     new_columns=["ts", "open", "high", "low", "close", "volume"])
    ts = df["ts"].str.to_datetime("%Y%m%d %H:%M", time_zone="UTC", strict=False,
                                  time_unit="ms")
    if ts.null_count():
        raise _bad_row(path, "ts", df["ts"], ts)
    out = {"ts": ts.dt.epoch("ms")}
    for c in ("open", "high", "low", "close"):
        out[c] = _floats(path, df[c], positive=True, first=1) / 10_000
    out["volume"] = _floats(path, df["volume"], first=1)
    return pl.DataFrame(out)


def _lean_trades(path: Path, data: bytes) -> pl.DataFrame:
    m = re.search(r"(\d{8})", path.name)
    if not m:
        raise InputError(f"{path}: a Lean trade file needs its date (YYYYMMDD) in its name")
    try:
        day = datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=NEW_YORK)
    except ValueError:
        raise InputError(f"{path}: {m.group(1)} in the name is not a date") from None
    midnight = int(day.timestamp() * 1000)
    df = pl.read_csv(io.BytesIO(data), has_header=False, infer_schema=False)
    if df.width < 3:
        raise InputError(f"{path}: a Lean trade file has at least 3 columns")
    raw = df[df.columns[0]].alias("ts")
    ms = _floats(path, raw, first=1)
    bad = ~ms.is_between(0, TIMEFRAME_MS["1d"], closed="left")
    if bad.any():
        row = int(bad.arg_max() or 0)
        raise InputError(f"{path}: row {row + 1}, column ts: {_cut(raw[row])} is not "
                         "milliseconds since midnight")
    return pl.DataFrame({
        "ts": (ms.cast(pl.Int64) + midnight).alias("ts"),
        "price": _floats(path, df[df.columns[1]].alias("price"), positive=True, first=1) / 10_000,
        "size": _floats(path, df[df.columns[2]].alias("size"), first=1),
        "side": pl.Series("side", [UNKNOWN_SIDE] * len(df), dtype=pl.Int8),
    })


def _finish(path: Path, df: pl.DataFrame, kind: str, first: int = 2,
            dropped: int = 0, no_range: int = 0) -> Loaded:
    """Sorted by ``ts``, repeated trade ids dropped; ``first``: the file row of the first."""
    if df.is_empty():
        raise InputError(f"{path}: no rows")
    ts = df["ts"].to_numpy()
    bad = (ts < TS_MIN) | (ts > TS_MAX)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{path}: row {row + first}, column ts: {int(ts[row])} ms is outside "
                         "the years 1-9999")
    unsorted = int(np.sum(ts[1:] < ts[:-1])) if len(ts) > 1 else 0
    if unsorted:
        df = df.sort("ts", maintain_order=True)
    n = len(df)
    if "trade_id" in df.columns:
        df = df.unique(subset="trade_id", keep="first", maintain_order=True)
    elif kind == "candles":  # a time written twice (a download's last row, repeated): the later
        df = df.unique(subset="ts", keep="last", maintain_order=True)
    duplicates = n - len(df)
    return Loaded(kind, df, unsorted, duplicates, str(path), dropped, no_range)
