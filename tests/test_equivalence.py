"""Replay equivalence: a live run's store, replayed, gives exactly the regimes and decisions the
live run made (the models it trained taking effect at the bars where they did live)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from test_e2e import server

pytestmark = pytest.mark.e2e


def test_replay_from_store_reproduces_the_live_run(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    env = {
        "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{db}", "AETHERION_TIMEFRAMES": "1s,5s",
        "AETHERION_DECISION_TIMEFRAME": "1s", "AETHERION_REGIME_RETRAIN_BARS": "10",
        "AETHERION_SIM_RATE": "40", "AETHERION_MARKETS": json.dumps([
            {"id": "btcusdt", "venue": "crypto", "connector": "simulator", "symbol": "BTC/USDT",
             "start_price": 60000},
            {"id": "nifty", "venue": "nse", "connector": "simulator", "symbol": "NIFTY",
             "start_price": 22000}]),
    }
    with server(env, tmp_path / "server.log"):
        time.sleep(28)
    sync = create_engine(f"sqlite:///{db}")
    for market in ("btcusdt", "nifty"):
        out = tmp_path / f"{market}.csv"
        r = subprocess.run(
            [sys.executable, "-m", "aetherion", "replay", "--from-store", "--market", market,
             "--out", str(out)], env={**os.environ, **env}, capture_output=True, text=True,
            timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        with sync.connect() as conn:
            live = {row.bar_time: row for row in conn.execute(text(
                "select * from decisions where market = :m"), {"m": market})}
            fused = {row.open_time: row for row in conn.execute(text(
                "select * from regime_state where market = :m and timeframe = 'fused'"),
                {"m": market})}
            own = {row.open_time: row for row in conn.execute(text(  # the replayed timeframe
                "select * from regime_state where market = :m and timeframe = '1s'"),
                {"m": market})}
            models = conn.execute(text("select count(*) from model_versions where market = :m "
                                       "and timeframe = '1s'"), {"m": market}).scalar()
        assert models and models >= 2, "at least one retrain happened live"
        assert summary["models_replayed"] >= models and summary["models_missing"] == 0
        with out.open() as f:
            replayed = {int(row["open_time"]): row for row in csv.DictReader(f)}
        assert len(live) >= 15 and len(replayed) >= len(live) - 1
        compared = 0
        for t, row in replayed.items():
            if t not in live:
                continue
            d, u, o = live[t], fused[t], own.get(t)
            assert (row["action"], row["position"], row["rule"]) == (
                d.action, d.position_after, d.rule), t
            assert float(row["exposure"]) == d.exposure, t
            assert row["regime"] == u.regime, t
            assert (row["regime_raw"], float(row["confidence_raw"])) == (
                (o.regime_raw, o.confidence_raw) if o else ("unknown", 0.0)), t
            assert float(row["confidence"]) == u.confidence and d.confidence == u.confidence
            assert row["strategy"] == (d.strategy or "")
            compared += 1
        assert compared >= len(live) - 1
    sync.dispose()
