"""Retention: the purge deletes what is past its horizon, in every store, and a steady stream
keeps the stores bounded."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from test_e2e import server
from test_storage import bar

from aetherion.config import Settings
from aetherion.decision.model import Decision
from aetherion.domain import BUY, BookSnapshot, Features, RegimeUpdate, Tick, Transition
from aetherion.storage.decisions import write_decisions
from aetherion.storage.market import MarketStore
from aetherion.storage.retention import MARKET_TABLES, STATE_TABLES, plan
from aetherion.storage.state import StateStore

NOW = 1_800_000_000_000
DAY = 86_400_000
SETTINGS = Settings(retention_ticks="1d", retention_books="12h",  # type: ignore[arg-type]
                    retention_history="30d")


async def test_purge_keeps_what_is_within_each_horizon(store: MarketStore) -> None:
    old_tick, new_tick = NOW - 2 * DAY, NOW - DAY // 2
    await store.write_ticks([Tick("btc", old_tick, 1.0, 1.0, BUY, "1"),
                             Tick("btc", new_tick, 1.0, 1.0, BUY, "2")])
    await store.write_books("crypto", [BookSnapshot("btc", NOW - DAY // 2 - 1, (), ()),
                                       BookSnapshot("btc", NOW - DAY // 4, (), ())])
    await store.write_bars([bar(NOW - 40 * DAY), bar(NOW - 2 * DAY)])
    await store.write_features([Features("btc", "1m", NOW - 40 * DAY, 1.0),
                                Features("btc", "1m", NOW - 2 * DAY, 1.0)])
    gone = await store.purge(plan(SETTINGS, NOW, MARKET_TABLES))
    assert gone["market_ticks"] == 1 and gone["crypto_orderbook"] == 1
    assert gone["market_candles"] == 1 and gone["market_features"] == 1
    assert [t.ts for t in await store.ticks("btc", 10)] == [new_tick]
    book = await store.latest_book("crypto", "btc")
    assert book is not None and book.ts == NOW - DAY // 4
    assert [b.open_time for b in await store.bars("btc", "1m", 10)] == [NOW - 2 * DAY]
    assert [f.open_time for f in await store.features("btc", "1m", 10)] == [NOW - 2 * DAY]
    again = await store.purge(plan(SETTINGS, NOW, MARKET_TABLES))
    assert sum(again.values()) == 0


async def test_state_purge_and_forever(sql_url: str) -> None:
    state = await StateStore.open(sql_url)
    try:
        probs = {"bull": 1.0, "bear": 0.0, "sideways": 0.0, "crisis": 0.0}
        for t in (NOW - 40 * DAY, NOW - DAY):
            await state.write_regimes([RegimeUpdate("btc", "fused", t, "bull", "bull", 1.0,
                                                    1.0, probs)])
            await state.write_transitions([Transition("btc", "fused", t, "bear", "bull", 1.0)])
            await write_decisions(state.engine, [Decision(
                id="", market="btc", timeframe="1m", bar_time=t, action="HOLD", strategy=None,
                regime="bull", confidence=1.0, price=1.0, rule="r", inputs={},
                position_before="flat", position_after="flat", exposure=0.0,
                created_at=t)])
        forever = Settings(retention_history="0")  # type: ignore[arg-type]
        assert plan(forever, NOW, STATE_TABLES) == {}
        gone = await state.purge(plan(SETTINGS, NOW, STATE_TABLES))
        assert gone == {"regime_state": 1, "regime_transitions": 1, "decisions": 1}
        assert [r["open_time"] for r in await state.regime_history("btc", "fused", 10)] \
            == [NOW - DAY]
    finally:
        await state.close()


def test_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="like 7d"):
        Settings(retention_ticks="7 days")  # type: ignore[arg-type]


def test_steady_stream_stays_bounded(tmp_path: Path) -> None:
    """Ticks kept 3 s, history 6 s, a purge every second: what the store holds stops growing."""
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db",
           "AETHERION_TIMEFRAMES": "1s", "AETHERION_SIM_RATE": "50",
           "AETHERION_RETENTION_TICKS": "3s", "AETHERION_RETENTION_HISTORY": "6s",
           "AETHERION_RETENTION_INTERVAL_S": "1", "AETHERION_HISTORY_BARS": "0",
           "AETHERION_MARKETS": '[{"id":"btcusdt","venue":"crypto","connector":"simulator",'
                                '"symbol":"BTC/USDT"}]'}
    counts = []
    with server(env, tmp_path / "server.log") as base:
        for _ in range(3):
            time.sleep(5.0)
            now = time.time() * 1000
            ticks = httpx.get(f"{base}/api/market/trades/btcusdt",
                              params={"limit": 5000}).json()["trades"]
            bars = httpx.get(f"{base}/api/market/candles/btcusdt",
                             params={"timeframe": "1s", "limit": 5000}).json()["candles"]
            counts.append((len(ticks), len(bars)))
            assert ticks and min(t["ts"] for t in ticks) >= now - 3000 - 2500
            assert bars and min(b["open_time"] for b in bars) >= now - 6000 - 3500
    # Bounded by the settings, not growing with time: 50 trades/s kept 3 s, plus a purge
    # interval and slack for Poisson bursts and flush delay (unpurged, 15 s would hold ~750 ticks
    # and 15 bars).
    assert all(t <= 50 * (3 + 1 + 2) and b <= 6 + 1 + 3 for t, b in counts), counts
    assert "retention purge" in (tmp_path / "server.log").read_text()
