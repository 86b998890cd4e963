"""``aetherion replay`` as a user runs it: real files in, rows and a JSON summary out."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datadir import DATA

from aetherion.config import Settings
from aetherion.recorded import InputError
from aetherion.replay import OUTPUT_COLUMNS, load, replay


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "aetherion", "replay", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def spy_daily_csv(path: Path, n: int | None = None) -> Path:
    """The real SPY daily bars as a plain candles CSV with ISO times."""
    with zipfile.ZipFile(DATA / "us_equities" / "daily_spy.zip") as z:
        rows = list(csv.reader(io.TextIOWrapper(z.open("spy.csv"))))[:n]
    with path.open("w") as f:
        f.write("ts,open,high,low,close,volume\n")
        for r in rows:
            d = r[0][:8]
            o, h, lo, c = (int(x) / 10_000 for x in r[1:5])
            f.write(f"{d[:4]}-{d[4:6]}-{d[6:]}T00:00:00Z,{o},{h},{lo},{c},{r[5]}\n")
    return path


def test_candles_csv_rows_and_summary(tmp_path: Path) -> None:
    src = spy_daily_csv(tmp_path / "spy.csv", 1500)
    out = tmp_path / "out.parquet"
    r = run(src, "--market", "spy", "--out", out, "--regime-restarts", "2")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    df = pl.read_parquet(out)
    assert tuple(df.columns[: len(OUTPUT_COLUMNS)]) == OUTPUT_COLUMNS
    assert len(df) == summary["bars"] == 1500 and summary["timeframe"] == "1d"
    assert set(summary) >= {"bars", "trades", "elapsed_s", "trades_per_s", "bars_per_s",
                            "regime_share", "actions"}
    assert sum(summary["actions"].values()) == 1500
    perf = summary["performance"]
    assert perf["execution"] == "next bar open" and perf["bars"] == 1500
    assert set(perf["decisions"]) >= {"total_return", "annualized_volatility", "max_drawdown",
                                      "round_trips", "hit_rate"}
    assert "classification" not in summary and "true_regime" not in df.columns  # no truth
    assert abs(sum(summary["regime_share"].values()) - 1) < 1e-3
    assert df["ts"][0] == "1998-01-02T00:00:00Z"
    assert set(df["position"].unique()) <= {"long", "flat", "short"}
    level = df["position"].replace_strict({"long": 1.0, "flat": 0.0, "short": -1.0})
    for e, lv in zip(df["exposure"].to_list(), level.to_list(), strict=True):
        assert (e > 0) - (e < 0) == lv and (e * 4).is_integer()  # the position's sign, quarters
    assert set(df["exposure"].abs()) & {0.25, 0.5, 0.75}  # sized, not whole positions only
    assert set(df["regime"].unique()) - {"unknown"}  # a model was trained and used
    # the same through the original Lean zip (prices in 1/10,000 dollars, no header)
    r2 = run(DATA / "us_equities" / "daily_spy.zip", "--regime-restarts", "2")
    lines = r2.stdout.strip().splitlines()
    assert lines[0].startswith(",".join(OUTPUT_COLUMNS))
    assert json.loads(lines[-1])["bars"] == 5849


def test_prefix_of_the_input_gives_the_prefix_of_the_output(tmp_path: Path) -> None:
    full = run(spy_daily_csv(tmp_path / "a.csv", 1400), "--regime-restarts", "1")
    part = run(spy_daily_csv(tmp_path / "b.csv", 900), "--regime-restarts", "1")
    rows_full = full.stdout.strip().splitlines()[:-1]
    rows_part = part.stdout.strip().splitlines()[:-1]
    assert len(rows_part) == 901  # header + 900
    assert rows_part == rows_full[:901]


def test_trades_lean_file_to_minute_bars() -> None:
    src = DATA / "us_equities" / "spy_20131011_trade.zip"
    with zipfile.ZipFile(src) as z:
        n = sum(1 for line in z.read(z.namelist()[0]).splitlines() if line.strip())
    r = run(src, "--timeframe", "1m")
    lines = r.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["trades"] == n > 285_000 and summary["input_kind"] == "trades"
    rows = list(csv.DictReader(lines[:-1]))
    assert len(rows) == summary["bars"] and 380 <= len(rows) <= 1000
    assert rows[0]["volume_delta"] == ""  # no aggressor side recorded: null, not 0
    assert sum(float(x["volume"]) for x in rows) > 0


def test_trades_unsorted_and_duplicates_counted(tmp_path: Path) -> None:
    src = tmp_path / "t.csv.gz"
    lines = ["ts,price,size,side,trade_id"]
    for i in range(3000):
        lines.append(f"{1_700_000_000_000 + i * 400},{100 + (i % 7) * 0.1},1,"
                     f"{'buy' if i % 3 else 'sell'},{i}")
    lines[10], lines[11] = lines[11], lines[10]  # one pair out of order
    lines.append(lines[50])  # a repeated trade id
    src.write_bytes(gzip.compress("\n".join(lines).encode()))
    r = run(src, "--timeframe", "1m")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["trades"] == 3000
    assert summary["unsorted_rows_sorted"] >= 1 and summary["duplicate_trades_dropped"] == 1
    rows = list(csv.DictReader(r.stdout.strip().splitlines()[:-1]))
    assert rows[0]["volume_delta"] != ""  # sides given: delta known


@pytest.mark.parametrize(("content", "expect"), [
    ("ts,price\n1,2\n", "missing column(s) size"),
    ("ts,open,close\n1,2,3\n", "missing column(s) high, low for candles"),
    ("ts,close,true_regime\n1700006400000,1.5,Bull\n1700092800000,1.5,up\n",
     "row 3, column true_regime: 'up'"),
    ("ts,price,size\n1700000000000,1.5,2\n1700000000001,abc,2\n", "row 3, column price"),
    ("ts,price,size\n1700000000000,1.5,2\nnot-a-time,1.5,2\n", "row 3, column ts"),
    ("ts,price,size,side\n1700000000000,1.5,2,up\n", "row 2, column side"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, content: str, expect: str) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(content)
    r = run(src, ok=False)
    assert r.returncode == 2 and r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and expect in err[0], r.stderr


def test_corrupt_archive(tmp_path: Path) -> None:
    src = tmp_path / "trades.csv.gz"
    src.write_bytes(b"\x1f\x8b\x08\x00garbage")
    r = run(src, ok=False)
    assert r.returncode == 2 and "corrupt gz" in r.stderr and "Traceback" not in r.stderr


def test_store_flag_writes_bars_regimes_and_models(tmp_path: Path) -> None:
    import os
    import sqlite3

    db = tmp_path / "r.db"
    src = spy_daily_csv(tmp_path / "spy.csv", 700)
    env = {**os.environ, "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{db}"}
    r = subprocess.run([sys.executable, "-m", "aetherion", "replay", str(src), "--market", "spy",
                        "--store", "--regime-restarts", "1"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with sqlite3.connect(db) as conn:
        count = {t: conn.execute(f"select count(*) from {t} where market = 'spy'").fetchone()[0]  # noqa: S608
                 for t in ("market_candles", "market_features", "regime_state", "model_versions")}
    assert count["market_candles"] == count["market_features"] == 700
    assert count["regime_state"] >= 700 and count["model_versions"] >= 1


def test_close_only_candles_carry_true_regime_to_rows_and_summary(tmp_path: Path) -> None:
    spy = pl.read_csv(spy_daily_csv(tmp_path / "spy.csv", 700))
    truth = ["Bull" if i % 90 < 60 else "CRISIS" for i in range(len(spy))]
    src = tmp_path / "closes.csv"
    spy.select("ts", "close").with_columns(true_regime=pl.Series(truth)).write_csv(src)
    out = tmp_path / "rows.parquet"
    r = run(src, "--out", out, "--regime-restarts", "1")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    df = pl.read_parquet(out)
    assert summary["input_kind"] == "candles" and len(df) == 700
    assert df["open"].to_list() == df["high"].to_list() == df["low"].to_list() \
        == df["close"].to_list() == spy["close"].to_list()
    assert set(df["volume"].to_list()) == {0.0}
    closes = spy["close"].to_numpy()
    assert df["atr"][14] == pytest.approx(np.mean(np.abs(np.diff(closes[:15]))))  # |close - prev|
    assert df["true_regime"].to_list() == [t.lower() for t in truth]
    known = df.filter(pl.col("regime_raw") != "unknown")
    assert len(known) > 300 and known["confidence_raw"].is_between(0.0, 1.0).all()
    cls = summary["classification"]
    assert cls["bars"] == 700 and cls["per_regime"]["crisis"]["support"] == truth.count("CRISIS")
    assert 0.0 <= cls["ece"] <= 1.0


def test_column_of_a_wide_file(tmp_path: Path) -> None:
    src = tmp_path / "wide.csv"
    lines = ["Date,AAA,BBB"]
    for i in range(300):
        day = f"2001-{1 + i // 28:02d}-{1 + i % 28:02d}"
        lines.append(f"{day},{100 + i % 7},{'' if i < 100 else 50 + (i % 11) * 0.5}")
    src.write_text("\n".join(lines) + "\n")
    r = run(src, "--column", "bbb", "--regime-restarts", "1")
    rows = list(csv.DictReader(r.stdout.strip().splitlines()[:-1]))
    assert len(rows) == 200 and rows[0]["ts"] == "2001-04-17T00:00:00Z"  # empty rows dropped
    assert [float(x["close"]) for x in rows] == [50 + (i % 11) * 0.5 for i in range(100, 300)]
    assert all(x["open"] == x["high"] == x["low"] == x["close"] for x in rows)
    bad = run(src, "--column", "CCC", ok=False)
    err = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and bad.stdout == "" and len(err) == 1
    assert "no column 'CCC' (available: AAA, BBB)" in err[0]


def test_close_only_gaps_and_prices_not_above_zero_are_dropped_and_counted(
        tmp_path: Path) -> None:
    """Free daily data marks holidays with '.', 'NA' or nothing, and a futures price went below
    0 (WTI, 20 April 2020): those rows are dropped and counted; a close that is not a number
    still stops the replay, at its own row."""
    marks = {30: ".", 31: "", 45: "NA", 46: "NaN", 60: "-36.98", 61: "0"}
    lines = ["observation_date,WTI"] + [f"2020-{1 + i // 28:02d}-{1 + i % 28:02d},"
                            f"{marks.get(i, 20 + (i % 9) * 0.25)}" for i in range(250)]
    src = tmp_path / "fred.csv"
    src.write_text("\n".join(lines) + "\n")
    r = run(src, "--column", "WTI", "--regime-restarts", "1")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader(r.stdout.strip().splitlines()[:-1]))
    assert summary["closes_dropped"] == len(marks) and len(rows) == 250 - len(marks)
    assert "rows without a usable close dropped" in r.stderr
    assert all(float(x["close"]) > 0 for x in rows)
    assert rows[30]["ts"] == "2020-02-05T00:00:00Z"  # rows 30 and 31 (02-03, 02-04) are gone
    again = json.loads(run(src, "--regime-restarts", "1").stdout.strip().splitlines()[-1])
    assert again["bars"] == len(rows)  # a date column and one other: no --column needed
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("ts,close\n2020-04-17,18.27\n2020-04-20,-36.98\n2020-04-21,8.91\n"
                      "2020-04-22,.\n2020-04-23,abc\n")
    bad = run(narrow, ok=False)
    assert bad.returncode == 2 and "row 6, column close: cannot parse 'abc'" in bad.stderr


def test_times_before_1970_replay_like_any_other(tmp_path: Path) -> None:
    """FRED's gold fixing starts in 1968: epoch times below 0 are bars like any other (the
    candle engine once took every one of them for a late arrival and stopped the replay, and
    then every model took effect at time 0, so no bar before 1970 had a regime)."""
    spy = pl.read_csv(spy_daily_csv(tmp_path / "spy.csv", 1000))
    labels = {}
    for year in (1968, 1990):
        days = pl.date_range(pl.date(year, 4, 1), pl.date(year + 5, 12, 31), "1d",
                             eager=True)[:1000]
        closes = tmp_path / f"closes{year}.csv"
        pl.DataFrame({"ts": days, "close": spy["close"]}).write_csv(closes)
        rows = replay(load(closes, "candles"), Settings(regime_restarts=1), "gold").rows
        assert [r["ts"][:10] for r in rows] == [str(d) for d in days]
        labels[year] = [(r["regime_raw"], r["regime"], r["exposure"]) for r in rows]
    assert rows[0]["open_time"] > 0
    assert labels[1968] == labels[1990]  # the same closes: the same regimes, whatever the date
    assert sum(raw != "unknown" for raw, _, _ in labels[1968]) > 700
    trades = tmp_path / "trades.csv"  # one a second across midnight of 1970-01-01
    ts = range(-120_000, 120_000, 1000)
    trades.write_text("ts,price,size\n" + "".join(f"{t},{100 + t % 7 / 10},1\n" for t in ts))
    bars = replay(load(trades, "trades"), Settings(), "old", "1m").rows
    assert [b["open_time"] for b in bars] == [-120_000, -60_000, 0, 60_000]
    assert [b["volume"] for b in bars] == [60.0] * 4


def test_yahoo_holiday_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    """Yahoo's daily files give a holiday a row of nulls: dropped and counted as a close-only
    gap is, and so is a row without a close. A row with a close but no usable open, high or
    low (^GSPC and ^DJI open at 0 from 1962 to 1982) is that close alone, o = h = l = c, and
    counted; of a day written twice the later row is kept, counted. A value that is not a
    number still stops the replay, at its own row."""
    head = "Date,Open,High,Low,Close,Adj Close,Volume\n"
    days = [f"2001-04-{d:02d}" for d in range(2, 28)]
    lines = [f"{d},{100 + i},{102 + i},{99 + i},{101 + i},{101 + i},{1000 + i}\n"
             for i, d in enumerate(days)]
    lines[10] = f"{days[10]},null,null,null,null,null,null\n"
    lines[11] = f"{days[11]},,,,,,\n"
    lines[12] = f"{days[12]},112,114,111,null,null,1012\n"
    lines[3] = f"{days[3]},0.0,105,102,104,104,1003\n"
    lines[5] = f"{days[5]},105,null,104,106,106,1005\n"
    lines[6] = f"{days[6]},106,108,-105,107,107,1006\n"
    src = tmp_path / "dax.csv"
    src.write_text(head + "".join(lines))
    loaded = load(src)
    assert loaded.dropped == 3 and len(loaded.frame) == len(days) - 3
    assert loaded.no_range == 3
    kept = [i for i in range(26) if i not in (10, 11, 12)]
    assert loaded.frame["close"].to_list() == [101.0 + i for i in kept]
    assert loaded.frame["open"].to_list() == [
        101.0 + i if i in (3, 5, 6) else 100.0 + i for i in kept]
    assert loaded.frame["high"].to_list() == [
        101.0 + i if i in (3, 5, 6) else 102.0 + i for i in kept]
    summary = replay(loaded, Settings(), "dax").summary
    assert (summary["closes_dropped"], summary["ranges_missing"]) == (3, 3)
    # a download taken during the session repeats its last day, updated: the later row is kept
    src.write_text(head + "".join(lines) + lines[-1].replace(",126,126,", ",127,127,"))
    again = load(src)
    assert again.duplicates == 1 and again.frame["close"].to_list()[-1] == 127.0
    assert again.frame.drop("close").equals(loaded.frame.drop("close"))
    assert replay(again, Settings(), "dax").summary["duplicate_candles_dropped"] == 1
    lines[7] = f"{days[7]},107,1o9,106,108,108,1007\n"
    src.write_text(head + "".join(lines))
    with pytest.raises(InputError, match="row 9, column high: cannot parse '1o9'"):
        load(src)


def test_yahoo_adjusted_close_scales_the_prices(tmp_path: Path) -> None:
    """A stock's Yahoo file holds raw prices and ``Adj Close``: a 2:1 split halves Close
    overnight. Prices are scaled by Adj Close / Close, so the split is no crash."""
    rows = [("2020-08-27", 500, 510, 495, 504, 126), ("2020-08-28", 505, 509, 498, 500, 125),
            ("2020-08-31", 127, 131, 126, 129, 129), ("2020-09-01", 132, 134, 130, 134, 134)]
    src = tmp_path / "aapl.csv"
    src.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n" + "".join(
        f"{d},{o},{h},{lo},{c},{a},100\n" for d, o, h, lo, c, a in rows))
    frame = load(src).frame
    assert frame["close"].to_list() == pytest.approx([a for *_, a in rows])
    assert frame["high"].to_list() == pytest.approx([h * a / c for _, _, h, _, c, a in rows])
    assert abs(math.log(frame["close"][2] / frame["close"][1])) < 0.05  # was ln(129/500)
    assert (frame["high"] >= frame["close"]).all() and (frame["low"] <= frame["close"]).all()


@pytest.mark.parametrize(("fmt", "first"), [
    ("{m}/{d}/{y}", "1/29/1985"), ("{d}/{m}/{y}", "29/1/1985"),
    ("{d:02d}.{m:02d}.{y}", "29.01.1985")])
def test_dates_as_spreadsheets_write_them(tmp_path: Path, fmt: str, first: str) -> None:
    """arch's bundled index files write 1/29/1985; European files 29/1/1985 or 29.01.1985: a
    whole column in one of those is read as dates, the order being the one every row fits."""
    days = [(1985, 1, 29), (1985, 1, 30), (1985, 2, 1), (1985, 2, 4)]
    src = tmp_path / "dates.csv"
    src.write_text("Date,Close\n" + "".join(
        f"{fmt.format(y=y, m=m, d=d)},{100 + d}\n" for y, m, d in days))
    assert src.read_text().splitlines()[1].startswith(first)
    ts = load(src).frame["ts"].to_list()
    assert ts == [int(datetime(y, m, d, tzinfo=UTC).timestamp() * 1000) for y, m, d in days]
    ambiguous = tmp_path / "ambiguous.csv"  # every day 12 or less: the order that runs forward
    md = [(1, 11), (1, 12), (2, 1), (2, 2)]
    ambiguous.write_text("ts,close\n" + "".join(
        f"{fmt.format(y=2020, m=m, d=d)},{100 + d}\n" for m, d in md))
    got = [datetime.fromtimestamp(t / 1000, UTC) for t in load(ambiguous).frame["ts"]]
    assert [(t.month, t.day) for t in got] == md
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("ts,close\n1985-01-29,1\n1/30/1985,2\n")
    with pytest.raises(InputError, match="row 3, column ts: cannot parse '1/30/1985'"):
        load(mixed)


def test_yfinance_daily_midnights_with_an_offset_are_their_dates(tmp_path: Path) -> None:
    """yfinance writes a daily bar as the exchange's midnight with its UTC offset
    (2020-03-06 00:00:00-05:00; Tokyo's +09:00 is the day before in UTC): each is its date,
    so the file replays as daily bars. Times that are not all midnights keep their offsets."""
    days = [(2020, 3, 6), (2020, 3, 9), (2020, 3, 10)]  # the US clocks moved on the 8th
    for offsets in (("-05:00", "-04:00", "-04:00"), ("+09:00",) * 3):
        src = tmp_path / "yf.csv"
        src.write_text("Date,Open,High,Low,Close,Volume\n" + "".join(
            f"{y}-{m:02d}-{d:02d} 00:00:00{o},10,11,9,10.5,100\n"
            for (y, m, d), o in zip(days, offsets, strict=True)))
        ts = load(src).frame["ts"].to_list()
        assert ts == [int(datetime(y, m, d, tzinfo=UTC).timestamp() * 1000) for y, m, d in days]
        assert len(replay(load(src), Settings(), "yf").rows) == 3
    src.write_text("ts,price,size\n2020-03-06 09:30:00-05:00,10,1\n"
                   "2020-03-06 00:00:00-05:00,10,1\n")
    assert load(src).frame["ts"].to_list() == [1583470800000, 1583505000000]  # sorted


@pytest.mark.parametrize("unit", [1, 1_000_000, 1_000_000_000], ids=["s", "us", "ns"])
def test_epoch_seconds_micro_and_nanoseconds_are_read_as_such(tmp_path: Path, unit: int) -> None:
    """A column of epoch seconds (or µs, ns) is recognised by its range: the same bars as the
    same file in milliseconds. A column that is not all of one range stays milliseconds."""
    t0 = 1_704_067_200  # 2024-01-01, seconds
    rows = [(t0 + 60 * i, 100 + i % 3, 101 + i % 3, 99 + i % 3, 100.5 + i % 3) for i in range(5)]
    got = {}
    for name, scale in (("ms", 1000), ("other", unit)):
        src = tmp_path / f"{name}.csv"
        src.write_text("ts,open,high,low,close\n" + "".join(
            f"{t * scale},{o},{h},{lo},{c}\n" for t, o, h, lo, c in rows))
        got[name] = load(src).frame
    assert got["other"].equals(got["ms"])
    assert got["ms"]["ts"][0] == t0 * 1000
    yahoo = tmp_path / "yahoo.csv"  # its date column, another name for ts
    yahoo.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n" + "".join(
        f"{t * 1000},{o},{h},{lo},{c},{c},10\n" for t, o, h, lo, c in rows))
    assert load(yahoo).frame.drop("volume").equals(got["ms"].drop("volume"))
    mixed = tmp_path / "mixed.csv"  # a second and a millisecond: left as milliseconds
    mixed.write_text(f"ts,price,size\n{t0},1,1\n{t0 * 1000},1,1\n")
    assert load(mixed).frame["ts"].to_list() == [t0, t0 * 1000]


def test_shipped_wide_file_one_ticker() -> None:
    src = DATA / "daily" / "stocks20_close_1990_2022.csv.gz"
    got = load(src, column="AAPL")
    df = got.frame
    assert got.kind == "candles" and len(df) == 8313
    assert df["ts"][0] == 631_238_400_000 and df["close"][0] == pytest.approx(0.264)  # 1990-01-02
    assert (df["open"] == df["close"]).all() and (df["high"] == df["low"]).all()
    assert (df["volume"] == 0).all() and (df["close"] > 0).all()


def test_trades_true_regime_is_the_last_trade_of_the_bar(tmp_path: Path) -> None:
    regimes = ["bull", "Bear", "sideways", "crisis"]
    t0, src = 1_700_000_040_000, tmp_path / "t.csv"
    lines = ["ts,price,size,side,true_regime"]
    for i in range(1000):  # 150 trades a minute; the label changes every 70 trades
        lines.append(f"{t0 + i * 400},{100 + (i % 5) * 0.1},1,buy,{regimes[(i // 70) % 4]}")
    src.write_text("\n".join(lines) + "\n")
    res = replay(load(src), Settings(), timeframe="1m")
    assert res.rows
    for row in res.rows:
        last = max(i for i in range(1000) if (t0 + i * 400) // 60_000 * 60_000
                   == row["open_time"])
        assert row["true_regime"] == regimes[(last // 70) % 4].lower()


@pytest.mark.parametrize("name", ["_x", "(SPY) daily", "---", "Dow Jones Industrial Average daily"])
def test_any_market_name_goes(tmp_path: Path, name: str) -> None:
    """``--market`` only names the output: one that is not a market id (a leading '_', a
    bracket, nothing but dashes, over 32 characters) replays like any other."""
    src = spy_daily_csv(tmp_path / "spy.csv", 300)
    r = run(src, "--kind", "candles", f"--market={name}")
    assert json.loads(r.stdout.strip().splitlines()[-1])["bars"] == 300


def test_rows_take_the_replay_timeframes_own_raw_regime(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 1500
    vol = np.where((np.arange(n) // 200) % 2, 0.004, 0.001)
    close = 100 * np.exp(np.cumsum(rng.normal(0, vol)))
    src = tmp_path / "m.csv"
    pl.DataFrame({"ts": 1_700_000_040_000 + 60_000 * np.arange(n), "open": close,
                  "high": close * (1 + vol), "low": close * (1 - vol), "close": close,
                  "volume": np.full(n, 10.0)}).write_csv(src)
    res = replay(load(src), Settings(regime_min_bars=50, regime_restarts=1))
    assert res.summary["timeframe"] == "1m" and "5m" in res.summary["timeframes"]
    own = {u.open_time: u for u in res.sink.regimes if u.timeframe == "1m"}
    fused = {u.open_time: u for u in res.sink.regimes if u.timeframe == "fused"}
    differ = 0
    for row in res.rows:
        u, fz = own.get(row["open_time"]), fused[row["open_time"]]
        assert (row["regime_raw"], row["confidence_raw"]) == (
            (u.regime_raw, u.confidence_raw) if u else ("unknown", 0.0))
        assert (row["regime"], row["confidence"], row["strategy"]) == (
            fz.regime, fz.confidence, fz.strategy)
        differ += u is not None and row["confidence_raw"] != fz.confidence_raw
    assert differ > 100  # the fused view is not the 1m one


def test_investing_and_nasdaq_com_downloads_read_as_the_same_bars(tmp_path: Path) -> None:
    """Investing.com writes the close as Price, numbers with thousands commas, dates newest
    first (as 05/25/2017 or May 25, 2017) and a Vol. column; NASDAQ.com writes Close/Last, a
    $ sign on a stock's prices and an index's volume as --. Each reads as the same bars as a
    plain file of the same prices; a comma that is not a thousands separator stays an error."""
    rows = [(datetime(2017, 5, d, tzinfo=UTC), 21000 + 10 * d, 21050 + 10 * d, 20990 + 10 * d,
             21020.5 + 10 * d) for d in (22, 23, 24, 25, 26, 30, 31)]
    plain = tmp_path / "plain.csv"
    plain.write_text("ts,open,high,low,close\n" + "".join(
        f"{t:%Y-%m-%d},{o},{h},{lo},{c}\n" for t, o, h, lo, c in rows))
    want = load(plain).frame
    newest_first = rows[::-1]
    files = {
        "investing.csv": '"Date","Price","Open","High","Low","Vol.","Change %"\n' + "".join(
            f'"{t:%m/%d/%Y}","{c:,.2f}","{o:,.2f}","{h:,.2f}","{lo:,.2f}","268.97M","0.10%"\n'
            for t, o, h, lo, c in newest_first),
        "investing_old.csv": "Date,Price,Open,High,Low,Vol.,Change %\n" + "".join(
            f'"{t:%b %d, %Y}","{c:,.2f}","{o:,.2f}","{h:,.2f}","{lo:,.2f}",-,0.10%\n'
            for t, o, h, lo, c in newest_first),
        "nasdaq_index.csv": "Date,Close/Last,Volume,Open,High,Low\n" + "".join(
            f"{t:%m/%d/%Y},{c},--,{o},{h},{lo}\n" for t, o, h, lo, c in newest_first),
        "nasdaq_stock.csv": "Date,Close/Last,Volume,Open,High,Low\n" + "".join(
            f"{t:%m/%d/%Y},${c},77034210,${o},${h},${lo}\n" for t, o, h, lo, c in newest_first),
        "europe_semicolons.csv": "Date;Open;High;Low;Close\n" + "".join(  # 21.050,5
            f"{t:%d.%m.%Y};" + f"{o:,.1f};{h:,.2f};{lo};{c:,.1f}\n".replace(",", "_").replace(
                ".", ",").replace("_", ".") for t, o, h, lo, c in newest_first),
    }
    for name, text in files.items():
        src = tmp_path / name
        src.write_text(text)
        got = load(src)
        assert got.frame.drop("volume").equals(want.drop("volume")), name
        assert got.unsorted == len(rows) - 1, name
    assert load(tmp_path / "nasdaq_index.csv").frame["volume"].to_list() == [0.0] * len(rows)
    europe = tmp_path / "europe.csv"
    europe.write_text("Date,Open,High,Low,Close\n2017-05-22,\"21.000,5\",21050,20990,21020\n")
    with pytest.raises(InputError, match="row 2, column open: cannot parse '21.000,5'"):
        load(europe)
    trades = tmp_path / "trades.csv"  # a trade file's price stays a price
    trades.write_text("ts,price,size\n1704067200000,\"1,000.5\",2\n")
    assert load(trades).frame["price"].to_list() == [1000.5]
