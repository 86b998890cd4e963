"""Every bad input gets a clear answer: a 422 naming the parameter from the REST API, one line
naming file, row and column (exit status 2, no traceback) from ``aetherion replay``, and hostile
files (decompression bombs, endless lines) refused in bounded memory."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import polars as pl
import pytest
from test_e2e import server
from test_replay import run, spy_daily_csv

from aetherion.replay import load

GIB = 1 << 30
T0 = 1_700_000_000_000
HISTORY = ("/api/market/trades/btcusdt", "/api/market/candles/btcusdt",
           "/api/market/features/btcusdt", "/api/regime/btcusdt", "/api/decision/history")
MARKET = json.dumps([{"id": "btcusdt", "venue": "crypto", "connector": "simulator",
                      "symbol": "BTC/USDT", "start_price": 60000}])


def one_line(r: subprocess.CompletedProcess[str], *expect: str) -> str:
    """The replay failed with exit status 2 and exactly one stderr line holding ``expect``."""
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert all(e in err[0] for e in expect), err[0]
    return err[0]


# ---- REST -------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_history_parameters_beyond_64_bits_are_422_naming_them(tmp_path: Path) -> None:
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db",
           "AETHERION_TIMEFRAMES": "1s,5s", "AETHERION_SIM_RATE": "20", "AETHERION_MARKETS": MARKET}
    huge = ("9223372036854775808", "-9223372036854775809", str(10**30), "9" * 5000)
    with server(env, tmp_path / "server.log") as base:
        for path in HISTORY:
            for name in ("since", "until"):
                for value in huge:
                    r = httpx.get(f"{base}{path}", params={name: value})
                    assert r.status_code == 422, (path, name, value[:30], r.text[:300])
                    assert r.json()["detail"].startswith(f"{name}: "), r.text[:300]
                    assert len(r.text) < 300  # the value is cut, not echoed whole
            r = httpx.get(f"{base}{path}", params={"limit": str(2**64)})
            assert r.status_code == 422 and "limit" in json.dumps(r.json()["detail"]), r.text
            # the whole 64-bit range is still a window
            r = httpx.get(f"{base}{path}", params={"since": str(-(2**63)),
                                                   "until": str(2**63 - 1)})
            assert r.status_code == 200, (path, r.text[:300])


# ---- replay: one line naming file, row and column ---------------------------------------------

def _nested_parquet(path: Path) -> None:
    pl.DataFrame({"ts": [T0, T0 + 1], "price": [[1.0], [2.0]], "size": [1.0, 1.0]}) \
        .write_parquet(path)


def _text(content: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(content, encoding="utf-8")


TRADES = f"ts,price,size\n{T0},100.5,1\n"
CANDLES = f"ts,open,high,low,close\n{T0 - T0 % 60_000},100,101,99,100\n"
NEXT = T0 - T0 % 60_000 + 60_000
DAY = T0 - T0 % 86_400_000


@pytest.mark.parametrize(("name", "write", "expect"), [
    ("ts.csv", _text(TRADES + "99999999999999999999,100.5,1\n"), "row 3, column ts"),
    ("ts.csv", _text(TRADES + "-99999999999999999999,100.5,1\n"), "row 3, column ts"),
    ("ts.csv", _text(TRADES + "١٧٠٠٠٠٠٠٠٠٠٠١,100.5,1\n"), "row 3, column ts"),  # Arabic-Indic
    ("ts.csv", _text(TRADES + "9000000000000000000,100.5,1\n"), "row 3, column ts"),  # year >9999
    ("nested.parquet", _nested_parquet, "row 2, column price"),
    ("price.csv", _text(TRADES + f"{T0 + 1},abc,1\n"), "row 3, column price"),
    ("price.csv", _text(TRADES + f"{T0 + 1},0,1\n"), "row 3, column price"),
    ("price.csv", _text(TRADES + f"{T0 + 1},-3.5,1\n"), "row 3, column price"),
    ("price.csv", _text(TRADES + f"{T0 + 1},inf,1\n"), "row 3, column price"),
    ("price.csv", _text(TRADES + f"{T0 + 1},NaN,1\n"), "row 3, column price"),
    ("open.csv", _text(CANDLES + f"{NEXT},1OO,101,99,100\n"), "row 3, column open"),
    ("high.csv", _text(CANDLES + f"{NEXT},100,1O1,99,100\n"), "row 3, column high"),
    ("low.csv", _text(CANDLES + f"{NEXT},100,101,99x,100\n"), "row 3, column low"),
    ("close.csv", _text(CANDLES + f"{NEXT},100,101,99,1OO\n"), "row 3, column close"),
    ("closes.csv", _text(f"ts,close\n{DAY},1\n{DAY + 86_400_000},1O2\n"), "row 3, column close"),
    ("closes.csv", _text(f"ts,close\n{DAY},.\n{DAY + 86_400_000},0\n"), "no rows"),
    ("spy_20131011_trade.csv", _text("34200000,1690000,100\n34200001,0,100\n"),  # Lean, headerless
     "row 2, column price"),
    ("long.csv", _text(TRADES + f"{T0 + 1},{'7' * 100_000}x,1\n"), "row 3, column price"),
], ids=["ts-beyond-64-bits", "ts-below-64-bits", "ts-arabic-indic-digits", "ts-beyond-year-9999",
        "parquet-list-column", "price-not-a-number", "price-zero", "price-negative", "price-inf",
        "price-nan", "open-letter-o", "high-letter-o", "low-letter-x", "close-letter-o",
        "close-only-letter-o", "close-only-all-dropped", "lean-trade-price-zero",
        "value-of-100k-chars"])
def test_bad_replay_input_is_one_line(tmp_path: Path, name: str, write: Callable[[Path], None],
                                      expect: str) -> None:
    src = tmp_path / name
    write(src)
    line = one_line(run(src, ok=False), str(src), expect)
    assert len(line) < len(str(src)) + 200  # values are cut, never printed whole


def test_plot_and_out_paths_are_checked_before_the_run(tmp_path: Path) -> None:
    src = spy_daily_csv(tmp_path / "spy.csv", 400)
    missing = tmp_path / "no-such-folder" / "plot.png"
    one_line(run(src, "--plot", missing, ok=False), f"--plot {missing}", "not an existing folder")
    out = tmp_path / "no-such-folder" / "rows.csv"
    one_line(run(src, "--out", out, ok=False), f"--out {out}", "not an existing folder")
    one_line(run(src, "--out", tmp_path, ok=False), f"--out {tmp_path}", "folder")
    under_a_file = src / "rows.parquet"  # its "folder" is a file
    one_line(run(src, "--out", under_a_file, ok=False), str(under_a_file), "not an existing")
    # checked before reading the input: a missing input is not what it reports
    one_line(run(tmp_path / "absent.csv", "--plot", missing, ok=False), "--plot")


@pytest.mark.e2e
def test_from_store_after_the_timeframes_changed(tmp_path: Path) -> None:
    """A first run with 1m,1h stored a 1h model; the run replayed (1s,5s) had no 1h: the replay
    reuses only its own timeframes' models, whatever AETHERION_TIMEFRAMES says now."""
    db = tmp_path / "live.db"
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{db}", "AETHERION_SIM_RATE": "40",
           "AETHERION_MARKETS": MARKET}
    with server({**env, "AETHERION_TIMEFRAMES": "1m,1h"}, tmp_path / "a.log"):
        deadline = time.monotonic() + 60
        while not _models(db, "1h"):
            assert time.monotonic() < deadline, "no 1h model was stored"
            time.sleep(0.5)
    with server({**env, "AETHERION_TIMEFRAMES": "1s,5s"}, tmp_path / "b.log"):
        time.sleep(3)
    for now in ("1s,5s", "1m,5m,15m,1h"):
        r = subprocess.run(
            [sys.executable, "-m", "aetherion", "replay", "--from-store", "--market", "btcusdt",
             "--out", str(tmp_path / "rows.csv")],
            env={**os.environ, **env, "AETHERION_TIMEFRAMES": now}, capture_output=True,
            text=True, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["input_kind"] == "store" and summary["timeframes"] == ["1s", "5s"]
        assert summary["trades"] > 0


def _models(db: Path, timeframe: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("select count(*) from model_versions where timeframe = ?",
                                    (timeframe,)).fetchone()[0])
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


# ---- hostile files: bounded memory --------------------------------------------------------------

def measured(*args: str | Path, env: dict[str, str] | None = None,
             tmp: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """``aetherion replay`` in a subprocess, and its peak RSS in bytes (its own rusage, from
    ``wait4``: the test process's RUSAGE_CHILDREN would mix in every earlier child)."""
    out, err = tmp / "stdout", tmp / "stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "aetherion", "replay", *map(str, args)],
                                stdout=o, stderr=e, env={**os.environ, **(env or {})})
    timer = threading.Timer(300, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = subprocess.CompletedProcess(proc.args, proc.returncode,
                                         out.read_text(errors="replace")[-100_000:],
                                         err.read_text(errors="replace")[-100_000:])
    return result, usage.ru_maxrss * 1024  # kilobytes on Linux


def test_gzip_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """1.2 MB of gzip expanding to 500 MB of one repeated, valid trade row."""
    src = tmp_path / "trades.csv.gz"
    row = f"{T0},100.5,1\n".encode()
    block = row * ((4 << 20) // len(row))
    with gzip.open(src, "wb", compresslevel=6) as f:
        f.write(b"ts,price,size\n")
        for _ in range(500_000_000 // len(block)):
            f.write(block)
    assert src.stat().st_size < 2_000_000
    r, rss = measured(src, tmp=tmp_path)
    one_line(r, str(src), "decompression bomb")
    assert rss < GIB, rss


def test_zip_of_zeros_without_a_newline_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    src = tmp_path / "zeros.zip"
    zeros = bytes(4 << 20)
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z, \
            z.open("zeros.csv", "w", force_zip64=True) as f:
        for _ in range(500_000_000 // len(zeros)):
            f.write(zeros)
    assert src.stat().st_size < 600_000
    r, rss = measured(src, tmp=tmp_path)
    line = one_line(r, str(src), "row 1", "longer than")
    assert len(line) < 300 and rss < GIB, (len(line), rss)


def test_the_size_setting_bounds_plain_and_parquet_files(tmp_path: Path) -> None:
    env = {"AETHERION_REPLAY_MAX_BYTES": str(1 << 20)}
    src = tmp_path / "big.csv"
    src.write_text("ts,price,size\n" + "".join(f"{T0 + i},100.5,1\n" for i in range(60_000)))
    one_line(measured(src, env=env, tmp=tmp_path)[0], str(src), "AETHERION_REPLAY_MAX_BYTES")
    pq = tmp_path / "many.parquet"  # a few KB on disk, 100,000 x 3 x 8 bytes in memory
    pl.DataFrame({"ts": [T0] * 100_000, "price": [1.0] * 100_000, "size": [1.0] * 100_000}) \
        .write_parquet(pq)
    assert pq.stat().st_size < 1 << 20
    one_line(measured(pq, env=env, tmp=tmp_path)[0], str(pq), "AETHERION_REPLAY_MAX_BYTES")
    assert len(load(src).frame) == 60_000 and len(load(pq).frame) == 100_000  # the default
