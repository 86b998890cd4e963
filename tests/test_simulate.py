"""``aetherion simulate`` as a user runs it: a file with the true regime, readable by replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from aetherion.domain import REGIMES
from aetherion.replay import load
from aetherion.simulate import SimulateOptions, simulate

CANDLE_COLUMNS = ["ts", "open", "high", "low", "close", "volume", "buy_volume", "sell_volume",
                  "trade_count", "true_regime"]
TRADE_COLUMNS = ["ts", "price", "size", "side", "trade_id", "true_regime"]
JAN_1_2024 = 1_704_067_200_000


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "aetherion", "simulate", *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    return r


def summary_of(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # stdout is the summary; logs went to stderr
    out: dict[str, Any] = json.loads(lines[0])
    return out


def test_candles_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "sim.csv"
    r = run(out, "--timeframe", "5m", "--bars", "3000", "--seed", "5", "--venue", "nse",
            "--start", "2024-03-01T00:02:00Z", "--start-price", "22000")
    s = summary_of(r)
    df = pl.read_csv(out)
    assert df.columns == CANDLE_COLUMNS and len(df) == s["rows"] == 3000
    assert s["kind"] == "candles" and s["timeframe"] == "5m" and s["venue"] == "nse"
    assert s["start"] == "2024-03-01T00:00:00Z" and s["span_hours"] == 250.0
    ts = df["ts"].to_numpy()
    assert ts[0] == 1_709_251_200_000 and np.all(ts % 300_000 == 0)
    assert np.all(np.diff(ts) == 300_000)
    assert set(df["true_regime"].unique()) <= set(REGIMES)
    share = df["true_regime"].value_counts(normalize=True)
    for regime, p in share.iter_rows():
        assert abs(s["true_regime_share"][regime] - p) < 1e-3
    assert abs(sum(s["true_regime_share"].values()) - 1) < 1e-3
    assert (df["high"] >= df[["open", "close"]].max_horizontal()).all()
    assert (df["low"] <= df[["open", "close"]].min_horizontal()).all()
    assert ((df["buy_volume"] + df["sell_volume"] - df["volume"]).abs() < 1e-3).all()
    assert df["trade_count"].to_numpy().min() > 10_000  # 50 trades a second for 5 minutes
    assert abs(df["close"][0] / 22_000 - 1) < 0.02
    loaded = load(out)
    assert loaded.kind == "candles" and len(loaded.frame) == 3000
    assert loaded.frame["ts"].to_list() == ts.tolist()


@pytest.mark.parametrize("name", ["trades.parquet", "trades.csv.gz"])
def test_trades_end_to_end(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    r = run(out, "--kind", "trades", "--bars", "10", "--rate", "20", "--venue", "us",
            "--start", str(JAN_1_2024 + 1234), "--start-price", "450")
    s = summary_of(r)
    df = pl.read_parquet(out) if name.endswith(".parquet") else pl.read_csv(out)
    assert df.columns == TRADE_COLUMNS and len(df) == s["rows"]
    assert 10 * 60 * 20 * 0.9 < len(df) < 10 * 60 * 20 * 1.1
    ts = df["ts"].to_numpy()
    assert JAN_1_2024 <= ts[0] and ts[-1] < JAN_1_2024 + 600_000 and np.all(np.diff(ts) >= 0)
    assert set(df["side"].unique()) == {"buy", "sell"}
    assert df["trade_id"].n_unique() == len(df)
    assert set(df["true_regime"].unique()) <= set(REGIMES)
    loaded = load(out)
    assert loaded.kind == "trades" and len(loaded.frame) == len(df) and loaded.duplicates == 0
    assert loaded.frame["price"].to_list() == df["price"].to_list()


@pytest.mark.parametrize("kind", ["candles", "trades"])
def test_a_seed_gives_the_same_file(tmp_path: Path, kind: str) -> None:
    def write(name: str, seed: int) -> bytes:
        o = SimulateOptions(tmp_path / name, kind=kind, bars=120 if kind == "candles" else 3,
                            seed=seed)
        simulate(o)
        return o.out.read_bytes()

    a, b, c = write("a.csv", 1), write("b.csv", 1), write("c.csv", 2)
    assert a == b and a != c


def test_forty_thousand_minutes_hold_every_regime(tmp_path: Path) -> None:
    o = SimulateOptions(tmp_path / "long.parquet", bars=40_000, seed=9)
    s = simulate(o)  # its speed is not timed here: speed belongs in bench/
    assert s["rows"] == 40_000
    assert all(s["true_regime_share"][r] > 0.01 for r in REGIMES)
    df = pl.read_parquet(o.out)
    lr = np.diff(np.log(df["close"].to_numpy()))
    at = df["true_regime"].to_numpy()[1:]
    assert lr[at == "crisis"].std() > 3.5 * lr[at == "sideways"].std()


@pytest.mark.parametrize(("args", "expect"), [
    (["--kind", "ticks"], "--kind 'ticks' is not one of candles, trades"),
    (["--bars", "0"], "--bars must be between 1"),
    (["--rate", "fast"], "--rate 'fast' is not a number"),
    (["--start", "yesterday"], "--start 'yesterday'"),
    (["--timeframe", "2m"], "--timeframe '2m'"),
    (["--kind", "trades", "--bars", "100000"], "use fewer --bars"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], expect: str) -> None:
    r = run(tmp_path / "x.csv", *args, ok=False)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("out", ["x.txt", "missing/x.csv"])
def test_a_bad_output_path_is_one_line(tmp_path: Path, out: str) -> None:
    r = run(tmp_path / out, ok=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
