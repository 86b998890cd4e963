"""``aetherion replay`` as a user runs it: real files in, rows and a JSON summary out."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest
from datadir import DATA

from aetherion.replay import OUTPUT_COLUMNS


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
    assert set(perf["strategy"]) >= {"total_return", "annualized_volatility", "max_drawdown",
                                     "round_trips", "hit_rate"}
    assert abs(sum(summary["regime_share"].values()) - 1) < 1e-3
    assert df["ts"][0] == "1998-01-02T00:00:00Z"
    assert set(df["position"].unique()) <= {"long", "flat", "short"}
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
