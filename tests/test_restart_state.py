"""A restart goes on from what the store holds: the simulator from its market's last stored
price, model versions from the highest stored one (the real server, stopped and started again on
the embedded store)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_e2e import server

from aetherion.domain import ModelVersion
from aetherion.storage.state import StateStore

pytestmark = pytest.mark.e2e

TIMEFRAMES = ("1s", "5s")


def env_for(db: Path, start_price: float) -> dict[str, str]:
    return {
        "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{db}",
        "AETHERION_TIMEFRAMES": ",".join(TIMEFRAMES), "AETHERION_DECISION_TIMEFRAME": "1s",
        "AETHERION_SIM_RATE": "40", "AETHERION_REGIME_RETRAIN_BARS": "5",
        "AETHERION_MARKETS": json.dumps([{"id": "btcusdt", "venue": "crypto",
                                          "connector": "simulator", "symbol": "BTC/USDT",
                                          "start_price": start_price}]),
    }


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return list(conn.execute(sql, args))


def wait_for(what: str, ok: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def models(db: Path) -> dict[tuple[str, int], tuple[str, str]]:
    rows = query(db, "select timeframe, version, status, params from model_versions "
                     "where market = 'btcusdt'")
    return {(tf, v): (status, params) for tf, v, status, params in rows}


def logged(log: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            out.append(json.loads(line))
    return out


async def store_rejected_first_fits(db: Path) -> None:
    """What a run whose first fits were all rejected leaves: version 1, no active model."""
    state = await StateStore.open(f"sqlite+aiosqlite:///{db}")
    await state.write_models([
        ModelVersion("btcusdt", tf, 1, 0, 1, 0, 0, 0, None, {}, "rejected", "too few bars")
        for tf in TIMEFRAMES])
    await state.close()


def test_a_restart_goes_on_from_the_stored_price_and_model_versions(tmp_path: Path) -> None:
    db, log, log2 = tmp_path / "live.db", tmp_path / "first.log", tmp_path / "second.log"
    asyncio.run(store_rejected_first_fits(db))
    with server(env_for(db, 30_000.0), log, cwd=tmp_path):
        wait_for("a first fit of every timeframe",
                 lambda: all((tf, 2) in models(db) for tf in TIMEFRAMES))
    trained = [(e["timeframe"], e["version"], e["status"])
               for e in logged(log, "regime model trained")]
    stored = models(db)
    assert trained and all(stored.get((tf, v), ("",))[0] == st for tf, v, st in trained)
    assert {(tf, 2) for tf in TIMEFRAMES} <= {(tf, v) for tf, v, _ in trained}  # not 1 again
    assert all(stored[(tf, v)][1] != "{}" for tf, v, st in trained if st == "active")
    ((last_ts, last_price),) = query(
        db, "select ts, price from market_ticks where market = 'btcusdt' "
            "order by ts desc, id desc limit 1")
    highest = {tf: max(v for t, v in stored if t == tf) for tf in TIMEFRAMES}

    # Configured at 60,000 now: only a market without a stored price starts from there.
    with server(env_for(db, 60_000.0), log2, cwd=tmp_path):
        wait_for("ticks of the new run", lambda: bool(query(
            db, "select 1 from market_ticks where ts > ? limit 1", last_ts)))
        wait_for("a fit of the new run", lambda: bool(logged(log2, "regime model trained")))
    ((first_price,),) = query(db, "select price from market_ticks where ts > ? "
                                  "order by ts, id limit 1", last_ts)
    assert abs(first_price / last_price - 1) < 2e-3, (first_price, last_price)
    assert abs(first_price / 60_000 - 1) > 0.2
    reused = {e["timeframe"]: e["version"] for e in logged(log2, "regime model reused")}
    for tf, v in reused.items():
        assert stored[(tf, v)][0] == "active" and v == max(
            x for t, x in stored if t == tf and stored[(t, x)][0] == "active")
    after = [(e["timeframe"], e["version"]) for e in logged(log2, "regime model trained")]
    assert after and all(v > highest[tf] for tf, v in after)
    assert not logged(log2, "model version taken by another model; this one is not stored")


def test_bars_spanning_a_restart_hold_exactly_the_stored_trades(tmp_path: Path) -> None:
    """Stopped mid-minute and started again, the minute's bar (and every bar before and after)
    is the fold of the trades the store holds for it: the restart rebuilds the bars it left open
    from the recorded trades, not from made-up history."""
    db = tmp_path / "live.db"
    env = {**env_for(db, 30_000.0), "AETHERION_TIMEFRAMES": "1s,5s,1m"}
    while time.time() % 60 > 25:  # stop by second ~35, the bar closes ~25 s after the start
        time.sleep(0.5)
    with server(env, tmp_path / "first.log", cwd=tmp_path):
        time.sleep(8)
    stopped = time.time()
    minute = int(stopped // 60 * 60_000)
    with server(env, tmp_path / "second.log", cwd=tmp_path):
        wait_for("the minute's bar", lambda: bool(query(
            db, "select 1 from market_candles where timeframe = '1m' and open_time = ?",
            minute)), seconds=75)
    first = query(db, "select min(ts) from market_ticks")[0][0]
    checked = 0
    for tf, ms in (("1s", 1000), ("5s", 5000), ("1m", 60_000)):
        rows = query(db, "select open_time, trade_count, volume from market_candles "
                         "where timeframe = ? and open_time >= ?", tf, first - first % ms + ms)
        for open_time, count, volume in rows:
            ((n, v),) = query(db, "select count(*), coalesce(sum(size), 0) from market_ticks "
                                  "where ts >= ? and ts < ?", open_time, open_time + ms)
            assert (count, round(volume, 6)) == (n, round(v, 6)), (tf, open_time)
            checked += 1
    spanning = query(db, "select trade_count from market_candles where timeframe = '1m' "
                         "and open_time = ?", minute)
    assert spanning and spanning[0][0] > 200 and checked > 20
