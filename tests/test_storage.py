"""The stores against real servers: SQLite, MariaDB/MySQL and a MongoDB wire-protocol server."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import NxServer, TcpProxy
from sqlalchemy import inspect, text

from aetherion.config import Settings
from aetherion.domain import BUY, SELL, Bar, BookSnapshot, Features, RegimeUpdate, Tick, Transition
from aetherion.storage.market import MarketStore, MongoMarketStore, SqlMarketStore
from aetherion.storage.migrate import migrations_dir, upgrade
from aetherion.storage.schema import metadata
from aetherion.storage.state import StateStore
from aetherion.storage.writer import BufferedWriter

TABLES = {
    "system_state", "regime_state", "regime_transitions", "model_versions", "decisions",
    "market_ticks", "market_candles", "market_features", "crypto_orderbook", "us_orderbook",
    "nse_orderbook",
}


def bar(t: int, close: float = 10.0, revision: int = 0, tf: str = "1m") -> Bar:
    return Bar("btc", tf, t, 9.0, 11.0, 8.5, close, 3.0, 2.0, 1.0, 4, True, revision, t, t + 1)


async def test_migrations_from_empty_and_again(sql_url: str) -> None:
    await upgrade(sql_url)
    await upgrade(sql_url)  # a no-op the second time
    state = await StateStore.open(sql_url)
    async with state.engine.connect() as conn:
        names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        head = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    await state.close()
    assert TABLES <= names
    assert diff == []  # the migrations build exactly what schema.py declares
    assert head == ScriptDirectory(str(migrations_dir())).get_current_head()


async def test_migration_0002_adds_confidence_raw_and_exposure(sql_url: str) -> None:
    """A database at 0001 with rows in it: 0002 adds the columns (NULL in the old rows), reads
    of old rows still work, and it goes down and up again."""
    from alembic import command
    from alembic.config import Config

    from aetherion.storage.decisions import decision_history, load_policy_state
    from aetherion.storage.schema import decisions, regime_state

    def to(rev: str, down: bool = False) -> Callable[[Any], None]:
        def go(conn: Any) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(migrations_dir()))
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, rev)
        return go

    def columns(conn: Any) -> dict[str, set[str]]:
        return {t: {c["name"] for c in inspect(conn).get_columns(t)}
                for t in ("regime_state", "decisions")}

    state = await StateStore.open(sql_url, migrate=False)
    async with state.engine.begin() as conn:
        await conn.run_sync(to("0001"))
        assert "confidence_raw" not in (await conn.run_sync(columns))["regime_state"]
        await conn.execute(regime_state.insert(), {
            "market": "btc", "timeframe": "1m", "open_time": 0, "regime_raw": "bull",
            "regime": "bull", "confidence": 0.9, "probs": {"bull": 0.9}, "model_version": 1,
            "strategy": "trend_long", "contributions": None, "created_at": 5})
        await conn.execute(decisions.insert(), {
            "id": "btc:1m:0", "market": "btc", "timeframe": "1m", "bar_time": 0,
            "action": "BUY", "strategy": "trend_long", "regime": "bull", "confidence": 0.9,
            "price": 1.0, "rule": "r", "inputs": {}, "position_before": "flat",
            "position_after": "long", "suppressed": False, "reason": None,
            "model_version": 1, "created_at": 5})
        await conn.run_sync(to("head"))
        cols = await conn.run_sync(columns)
    assert "confidence_raw" in cols["regime_state"] and "exposure" in cols["decisions"]
    (row,) = await state.regime_history("btc", "1m", 10)
    assert row["regime"] == "bull" and row["confidence_raw"] is None
    (d,) = await decision_history(state.engine, "btc")
    assert d.exposure == 1.0  # an old row held its whole position
    restored = await load_policy_state(state.engine, "btc", "1m")
    assert restored is not None and restored.exposure == 1.0
    async with state.engine.begin() as conn:
        await conn.run_sync(to("0001", down=True))
        assert "exposure" not in (await conn.run_sync(columns))["decisions"]
        await conn.run_sync(to("head"))
    await state.close()


async def test_db_upgrade_command_and_migrations_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "new" / "dir" / "a.db"
    env = {**os.environ, "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{db}"}
    done = subprocess.run([sys.executable, "-m", "aetherion", "db", "upgrade"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert TABLES <= names
    monkeypatch.setenv("AETHERION_MIGRATIONS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="AETHERION_MIGRATIONS_DIR"):
        await upgrade(f"sqlite+aiosqlite:///{tmp_path}/b.db")


async def test_system_state_round_trip(sql_url: str) -> None:
    state = await StateStore.open(sql_url)
    assert await state.get_state("binance:btcusdt") is None
    await state.set_state("binance:btcusdt", {"last_trade_id": 5})
    await state.set_state("binance:btcusdt", {"last_trade_id": 7, "note": "é"})
    assert await state.get_state("binance:btcusdt") == {"last_trade_id": 7, "note": "é"}
    await state.close()


def regime(tf: str, t: int, label: str, conf: float = 0.8) -> RegimeUpdate:
    return RegimeUpdate("btc", tf, t, label, label, conf, conf,
                        {"bull": conf, "bear": 1 - conf, "sideways": 0.0, "crisis": 0.0}, 3,
                        "trend_long", {"1m": {"bull": 1.0}} if tf == "fused" else None)


async def test_confidence_raw_round_trip(sql_url: str) -> None:
    state = await StateStore.open(sql_url)
    probs = {"bull": 0.3, "bear": 0.55, "sideways": 0.15, "crisis": 0.0}
    await state.write_regimes([
        RegimeUpdate("btc", "1m", 0, "bear", "bull", 0.3, 0.55, probs, 1, "trend_long"),
        RegimeUpdate("btc", "fused", 0, "bear", "bull", 0.3, float("nan"), probs, 1,
                     "trend_long", {"1m": {"weight": 1.0}}),
    ])
    (one,) = await state.regime_history("btc", "1m", 10)
    assert (one["regime_raw"], one["confidence_raw"], one["confidence"]) == ("bear", 0.55, 0.3)
    latest = await state.latest_regimes("btc")
    assert latest["1m"]["confidence_raw"] == 0.55
    assert latest["fused"]["confidence_raw"] is None  # not finite: stored as null
    await state.close()


async def test_regimes_idempotent_history_and_latest(sql_url: str) -> None:
    state = await StateStore.open(sql_url)
    rows = [regime("1m", i * 60_000, "bull" if i < 3 else "bear") for i in range(5)]
    await state.write_regimes(rows[:3])
    await state.write_regimes([*rows[2:], regime("fused", 0, "sideways")])  # 2 again: ignored
    await state.write_regimes([regime("1m", 0, "crisis")])  # what was known then stays
    hist = await state.regime_history("btc", "1m", 10)
    assert [r["open_time"] for r in hist] == [240_000, 180_000, 120_000, 60_000, 0]
    assert hist[-1]["regime"] == "bull" and hist[0]["probs"]["bear"] == pytest.approx(0.2)
    window = await state.regime_history("btc", "1m", 2, since=60_000, until=180_000)
    assert [r["open_time"] for r in window] == [180_000, 120_000]
    latest = await state.latest_regimes("btc")
    assert {tf: r["open_time"] for tf, r in latest.items()} == {"1m": 240_000, "fused": 0}
    assert latest["fused"]["contributions"] == {"1m": {"bull": 1.0}}
    assert await state.latest_regimes("eth") == {}
    tr = [Transition("btc", "1m", 180_000, "bull", "bear", 0.8, "trend_long", "trend_short",
                     "stable 3 bars")]
    await state.write_transitions(tr)
    await state.write_transitions(tr)
    got = await state.transitions("btc", 10)
    assert [(r["from_regime"], r["to_regime"], r["cause"]) for r in got] == [
        ("bull", "bear", "stable 3 bars")]
    await state.close()


async def test_ticks_idempotent_newest_first(store: MarketStore) -> None:
    ticks = [Tick("btc", 1000 + i, 100.0 + i, 0.5, BUY if i % 2 else SELL, str(i), 7) for i in
             range(10)]
    await store.write_ticks(ticks[:6])
    await store.write_ticks(ticks[4:])  # overlap: 4 and 5 again
    got = await store.ticks("btc", 100)
    assert [t.trade_id for t in got] == [str(i) for i in range(9, -1, -1)]
    assert got[0] == ticks[9]
    window = await store.ticks("btc", 3, since=1002, until=1007)
    assert [t.ts for t in window] == [1007, 1006, 1005]
    assert await store.ticks("eth", 10) == []


async def test_bars_revision_rule(store: MarketStore) -> None:
    await store.write_bars([bar(0), bar(60_000), bar(120_000, tf="5m")])
    await store.write_bars([bar(60_000, close=12.0, revision=2)])
    await store.write_bars([bar(60_000, close=99.0, revision=1)])  # older revision: ignored
    await store.write_bars([bar(0)])  # a retry of the same write
    got = await store.bars("btc", "1m", 10)
    assert [b.open_time for b in got] == [60_000, 0]
    assert got[0].close == 12.0 and got[0].revision == 2
    assert got[1] == bar(0)
    await store.write_bars([bar(60_000, close=13.0, revision=3)])
    assert (await store.bars("btc", "1m", 1))[0].close == 13.0
    assert [b.open_time for b in await store.bars("btc", "1m", 10, since=1, until=60_000)] == [
        60_000]
    assert [b.timeframe for b in await store.bars("btc", "5m", 10)] == ["5m"]


async def test_features_first_write_wins(store: MarketStore) -> None:
    f = Features("btc", "1m", 0, 10.0, None, None, None, None, None, 1.0, 1.0, 0.5,
                 {"log_range": 0.1})
    g = Features("btc", "1m", 60_000, 11.0, 0.0953, 2.0, 1.5, 0.01, 7.2, None, None, None,
                 {"log_range": None})
    await store.write_features([f, g])
    await store.write_features([Features("btc", "1m", 0, 99.0)])
    got = await store.features("btc", "1m", 10)
    assert got == [g, f]
    nan = Features("btc", "1m", 120_000, 12.0, float("nan"), float("inf"),
                   extra={"momentum": float("-inf"), "log_range": 0.2})
    await store.write_features([nan])
    (back,) = await store.features("btc", "1m", 1, since=120_000)
    assert (back.log_return, back.true_range) == (None, None)
    assert back.extra == {"momentum": None, "log_range": 0.2}


async def test_books_by_venue(store: MarketStore) -> None:
    b1 = BookSnapshot("nifty", 5, ((100.0, 1.0), (99.5, 2.0)), ((100.5, 1.5),), 42)
    b2 = BookSnapshot("nifty", 6, ((101.0, 1.0),), ((101.5, 1.0),), None, "resyncing")
    await store.write_books("nse", [b1, b2, b1])
    assert await store.latest_book("nse", "nifty") == b2
    assert await store.latest_book("crypto", "nifty") is None
    with pytest.raises(ValueError, match="unknown venue 'lse'"):
        await store.write_books("lse", [b1])


async def test_writer_batches_and_drains(store: MarketStore, tmp_path: Path) -> None:
    settings = Settings(store_batch_size=7, store_flush_ms=10)
    writer = BufferedWriter.for_market(store, settings, spool_dir=tmp_path / "spool")
    writer.start()
    ticks = [Tick("btc", i, 1.0, 1.0, BUY, str(i)) for i in range(100)]
    for i in range(0, 100, 9):
        writer.put_ticks(ticks[i:i + 9])
    writer.put_bars([bar(0)])
    await writer.close()
    assert writer.backlog == 0 and writer.written == 101
    assert len(await store.ticks("btc", 1000)) == 100


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def outage_round(store: MarketStore, down: Callable[[], Awaitable[None]],
                       up: Callable[[], Awaitable[None]], spool: Path) -> BufferedWriter:
    """Write through an outage: rows before, during (spilled past the bound) and after it."""
    settings = Settings(store_batch_size=50, store_flush_ms=10, store_buffer_rows=100)
    writer = BufferedWriter.for_market(store, settings, spool_dir=spool)
    writer.start()
    ticks = [Tick("btc", i, 100.0 + i, 1.0, BUY, str(i)) for i in range(1200)]
    writer.put_ticks(ticks[:200])
    await until(lambda: writer.backlog == 0)
    await down()
    writer.put_bars([bar(0, close=5.0, revision=1)])  # spilled soon; replayed after recovery
    for i in range(200, 1200, 10):
        writer.put_ticks(ticks[i:i + 10])
        writer.put_bars([bar(60_000 * (i // 10))])
        assert writer.in_memory <= 100 + 11  # memory stays bounded
        await asyncio.sleep(0.001)
    writer.put_bars([bar(0, close=1.0, revision=0)])  # an older revision, still in memory
    await until(lambda: writer.errors > 0)
    assert writer.spilled > 0 and list(spool.rglob("spill-*.jsonl"))
    await up()
    await writer.close()
    assert writer.backlog == 0 and writer.rejected == 0
    assert not list(spool.rglob("*.jsonl"))
    got = await store.ticks("btc", 5000)
    assert sorted(int(t.trade_id or 0) for t in got) == list(range(1200))  # none lost, no dupes
    bars = await store.bars("btc", "1m", 5000)
    assert len(bars) == 101 and bars[-1].open_time == 0
    assert (bars[-1].close, bars[-1].revision) == (5.0, 1)  # the newest revision won
    return writer


async def test_writer_mysql_unreachable_then_back(
    mysql_proxy: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    proxy, url = mysql_proxy
    state = await StateStore.open(url)
    await outage_round(SqlMarketStore(state.engine), proxy.stop, proxy.start, tmp_path / "sp")
    await state.close()


async def test_writer_mongo_stopped_then_started(own_nx: NxServer, tmp_path: Path) -> None:
    store = await MongoMarketStore.open(own_nx.url, "aeth_outage", timeout_ms=300)

    async def down() -> None:
        await asyncio.to_thread(own_nx.stop)

    async def up() -> None:
        await asyncio.to_thread(own_nx.start)

    await outage_round(store, down, up, tmp_path / "sp")
    assert await store.db["market_ticks"].count_documents({"market": "btc"}) == 1200
    await store.close()


async def test_writer_close_while_down_keeps_rows_for_next_start(
    mysql_proxy: tuple[TcpProxy, str], tmp_path: Path
) -> None:
    proxy, url = mysql_proxy
    state = await StateStore.open(url)
    store = SqlMarketStore(state.engine)
    settings = Settings(store_batch_size=50, store_flush_ms=10)
    spool = tmp_path / "spool"
    await proxy.stop()
    writer = BufferedWriter.for_market(store, settings, spool_dir=spool)
    writer.start()
    writer.put_ticks([Tick("btc", i, 1.0, 1.0, SELL, str(i)) for i in range(30)])
    await writer.close(grace_s=0.3)
    assert writer.backlog == 30 and list(spool.rglob("*.jsonl"))
    await proxy.start()
    again = BufferedWriter.for_market(store, settings, spool_dir=spool)
    again.start()
    assert again.backlog == 30  # the journal is counted from the start
    await again.close()
    assert again.backlog == 0 and not list(spool.rglob("*.jsonl"))
    assert len(await store.ticks("btc", 100)) == 30
    await state.close()


async def test_writer_sets_aside_rows_the_store_refuses(mysql_url: str, tmp_path: Path) -> None:
    state = await StateStore.open(mysql_url)
    store = SqlMarketStore(state.engine)
    writer = BufferedWriter.for_market(store, Settings(store_flush_ms=10), tmp_path / "spool")
    writer.start()
    bad = Tick("btc", 5, 1.0, 1.0, BUY, "x" * 300)  # longer than the trade_id column
    writer.put_ticks([Tick("btc", i, 1.0, 1.0, BUY, str(i)) for i in range(10)] + [bad])
    await writer.close(grace_s=5)
    assert writer.rejected == 1 and writer.backlog == 0
    assert len(await store.ticks("btc", 100)) == 10
    rejected = (tmp_path / "spool" / "market" / "rejected.jsonl").read_text()
    assert "x" * 300 in rejected
    await state.close()


async def test_writer_replays_a_journal_cut_short(tmp_path: Path) -> None:
    state = await StateStore.open(f"sqlite+aiosqlite:///{tmp_path}/m.db")
    store = SqlMarketStore(state.engine)
    spool = tmp_path / "spool" / "market"
    spool.mkdir(parents=True)
    ticks = [Tick("btc", i, 1.0, 1.0, BUY, str(i)) for i in range(3)]
    line = msgspec.json.encode(("ticks", ticks))
    (spool / "spill-1-1.jsonl").write_bytes(line + b"\n" + line[:25])  # a crash mid-line
    writer = BufferedWriter.for_market(store, Settings(store_flush_ms=10), tmp_path / "spool")
    writer.start()
    await writer.close()
    assert writer.rejected == 1 and not list(spool.glob("spill-*"))
    assert [t.trade_id for t in await store.ticks("btc", 10)] == ["2", "1", "0"]
    await state.close()


async def test_spill_during_a_write_loses_nothing(tmp_path: Path) -> None:
    """Rows arrive faster than a slow store takes them: the buffer spills while a batch is
    being written. Every row is written, once (the batch in flight is not spilled, and what
    is popped after the write is exactly that batch)."""
    written: list[int] = []
    gate = asyncio.Event()

    async def slow(rows: list[int]) -> None:
        await gate.wait()
        written.extend(rows)

    s = Settings(store_batch_size=50, store_buffer_rows=100, store_flush_ms=10)
    writer = BufferedWriter("slow", {"n": (int, slow)}, s, tmp_path / "spool")
    writer.start()
    writer.put("n", list(range(60)))
    await asyncio.sleep(0.05)  # the first batch of 50 is in flight, held by the gate
    writer.put("n", list(range(60, 300)))  # over the bound: spills while the batch waits
    assert writer.spilled > 0
    gate.set()
    await writer.close()
    assert sorted(written) == list(range(300)) and len(written) == 300


async def test_history_bars_never_replace_recorded_ones(store: MarketStore) -> None:
    await store.write_bars([bar(0, close=10.0)])
    await store.write_bars([bar(0, close=1.0), bar(60_000, close=2.0)], keep_existing=True)
    got = await store.bars("btc", "1m", 10)
    assert [(b.open_time, b.close) for b in got] == [(60_000, 2.0), (0, 10.0)]
    await store.write_bars([bar(60_000, close=3.0)])  # a recorded bar replaces a history bar
    assert (await store.bars("btc", "1m", 1))[0].close == 3.0


async def test_state_writer_batches_regimes(sql_url: str, tmp_path: Path) -> None:
    state = await StateStore.open(sql_url)
    writer = BufferedWriter.for_state(state, Settings(store_flush_ms=10), tmp_path / "spool")
    writer.start()
    writer.put("regimes", [regime("1m", i * 60_000, "bull") for i in range(20)])
    writer.put("regimes", [regime("1m", 0, "bear")])  # a retry of a known bar: ignored
    writer.put("transitions", [Transition("btc", "1m", 60_000, "unknown", "bull", 0.9)])
    await writer.close()
    assert writer.backlog == 0 and writer.rejected == 0
    hist = await state.regime_history("btc", "1m", 100)
    assert len(hist) == 20 and hist[-1]["regime"] == "bull"
    assert len(await state.transitions("btc", 10)) == 1
    await state.close()


async def test_model_versions_highest_and_a_clash_is_logged(sql_url: str) -> None:
    """Every attempt is stored; a retried write is quiet; another model under a stored version
    is not stored over it, and says so."""
    from structlog.testing import capture_logs

    from aetherion.domain import ModelVersion

    def mv(tf: str, version: int, trained_at: int, status: str) -> ModelVersion:
        return ModelVersion("btc", tf, version, trained_at, trained_at, 0, 9, 10, -1.0,
                            {"trained_at": trained_at}, status, "")

    state = await StateStore.open(sql_url)
    try:
        assert await state.highest_versions("btc") == {}
        await state.write_models([mv("1m", 1, 100, "rejected"), mv("1m", 2, 200, "active"),
                                  mv("5m", 3, 300, "rejected")])
        assert await state.highest_versions("btc") == {"1m": 2, "5m": 3}
        assert await state.highest_versions("eth") == {}
        with capture_logs() as logs:
            await state.write_models([mv("1m", 1, 100, "rejected")])  # a retry: the same model
        assert logs == []
        with capture_logs() as logs:
            await state.write_models([mv("1m", 1, 400, "active"), mv("1m", 3, 500, "active")])
        assert [(e["log_level"], e["version"]) for e in logs] == [("error", 1)]
        stored = {m.version: m for m in await state.models("btc", "1m")}
        assert stored[1].params == {"trained_at": 100} and stored[1].status == "rejected"
        assert stored[3].params == {"trained_at": 500}
    finally:
        await state.close()
