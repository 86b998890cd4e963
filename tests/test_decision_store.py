"""Decisions in the state store, on embedded SQLite and on the MariaDB server: idempotent
writes, restore after a restart (position, cooldown, decided bars), latest and history."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aetherion.decision import Decision, DecisionConfig, DecisionPolicy
from aetherion.domain import Bar, Features, RegimeUpdate
from aetherion.storage.decisions import (
    decision_history,
    latest_decisions,
    load_policy_state,
    write_decisions,
)
from aetherion.storage.migrate import upgrade_engine
from aetherion.storage.schema import decisions as T
from aetherion.storage.sql import make_engine

MIN = 60_000
CFG = DecisionConfig(momentum_bars=1, cooldown_bars=2, min_confidence=0.5, rules="signals",
                     allow_short=True, size_by_volatility=False).resolved(["1m"])
# closes of one market with a regime each: BUY at 1, exit at 3, opens held by the cooldown
SCRIPT = [(100.0, "bull"), (103.0, "bull"), (103.5, "bull"), (99.0, "bull"), (102.0, "bull"),
          (104.5, "bull"), (108.0, "bull"), (109.0, "crisis"), (111.0, "bull")]


@pytest.fixture
async def engine(sql_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(sql_url)
    await upgrade_engine(eng)
    yield eng
    await eng.dispose()


def feed(policy: DecisionPolicy, i: int, close: float, regime: str,
         market: str = "spy") -> Decision | None:
    b = Bar(market, "1m", i * MIN, close, close, close, close, 1.0, 0.0, 0.0, 1, True)
    strategy = "risk_off" if regime == "crisis" else "trend_long"
    fz = RegimeUpdate(market, "fused", b.open_time, regime, regime, 0.8, 0.8, {"bull": 0.8}, 2,
                      strategy)
    return policy.on_bar(b, Features(market, "1m", b.open_time, close, atr=1.0), fz)


def run(policy: DecisionPolicy, start: int, stop: int, market: str = "spy") -> list[Decision]:
    out = []
    for i in range(start, stop):
        d = feed(policy, i, *SCRIPT[i], market=market)
        assert d is not None
        out.append(d)
    return out


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(T))).scalar_one())


async def test_writes_are_idempotent_and_round_trip(engine: AsyncEngine) -> None:
    ds = run(DecisionPolicy("spy", CFG), 0, 5)
    assert [d.action for d in ds] == ["HOLD", "BUY", "HOLD", "SELL", "HOLD"]
    assert ds[4].suppressed and "cooldown" in (ds[4].reason or "")
    assert await write_decisions(engine, ds[:3]) == 3
    assert await write_decisions(engine, ds) == 2  # a retry with more: only the new ones
    assert await write_decisions(engine, ds + ds) == 0
    assert await write_decisions(engine, []) == 0
    assert await count_rows(engine) == 5
    # the same bar decided again (another process, another created_at) is still one row
    again = run(DecisionPolicy("spy", CFG), 0, 2)
    assert again[1].created_at >= ds[1].created_at and again[1].id == ds[1].id
    assert await write_decisions(engine, again) == 0
    stored = await decision_history(engine, "spy")
    assert stored == ds[::-1]  # every field back as it went in, newest first


async def test_restart_restores_state_and_redelivery_stores_nothing_twice(
        engine: AsyncEngine) -> None:
    first = DecisionPolicy("spy", CFG)
    assert await write_decisions(engine, run(first, 0, 5)) == 5
    assert await load_policy_state(engine, "spy", "5m") is None
    restored = await load_policy_state(engine, "spy", "1m")
    assert restored == first.state()
    assert restored is not None and restored.position == "flat"
    assert (restored.last_action_time, restored.bars_since_action) == (3 * MIN, 1)

    second = DecisionPolicy("spy", CFG, restored)  # the process restarted
    for i in range(0, 5):  # the connector re-delivers what it had: no decision, no row
        assert feed(second, i, *SCRIPT[i]) is None
    rest = run(second, 5, len(SCRIPT))
    # bar 5: still in the cooldown restored from the store; bar 6 opens; crisis exits at 7;
    # bar 8 waits for the cooldown again
    assert [(d.action, d.position_after) for d in rest] == [
        ("HOLD", "flat"), ("BUY", "long"), ("SELL", "flat"), ("HOLD", "flat")]
    assert rest[0].suppressed and rest[0].reason is not None and "2 of 2" in rest[0].reason
    assert rest[2].rule == "crisis.exit" and rest[3].suppressed
    assert await write_decisions(engine, rest) == 4
    assert await write_decisions(engine, rest) == 0
    assert await count_rows(engine) == len(SCRIPT)
    after = await load_policy_state(engine, "spy", "1m")
    assert after == second.state()
    # an uninterrupted run decides exactly the same
    whole = run(DecisionPolicy("spy", CFG), 0, len(SCRIPT))
    got = await decision_history(engine, "spy", limit=100)
    assert [d.model_dump(exclude={"created_at"}) for d in got] == [
        d.model_dump(exclude={"created_at"}) for d in whole[::-1]]


async def test_exposure_round_trips_and_restores(engine: AsyncEngine) -> None:
    ds = run(DecisionPolicy("spy", CFG), 0, 3)  # BUY at 1: long from there
    assert [d.exposure for d in ds] == [0.0, 1.0, 1.0]
    await write_decisions(engine, ds)
    assert [d.exposure for d in await decision_history(engine, "spy")] == [1.0, 1.0, 0.0]
    restored = await load_policy_state(engine, "spy", "1m")
    assert restored is not None and (restored.position, restored.exposure) == ("long", 1.0)
    assert DecisionPolicy("spy", CFG, restored).state().exposure == 1.0
    async with engine.begin() as conn:  # a row written before the column existed
        await conn.execute(T.update().where(T.c.bar_time == 2 * MIN).values(
            exposure=None, position_after="flat"))
    (old, *_) = await decision_history(engine, "spy")
    assert (old.position_after, old.exposure) == ("flat", 0.0)
    async with engine.begin() as conn:
        await conn.execute(T.update().where(T.c.bar_time == 2 * MIN).values(exposure=0.5))
    (latest,) = await latest_decisions(engine, ["spy"])
    assert latest.exposure == 0.5
    restored = await load_policy_state(engine, "spy", "1m")
    assert restored is not None and restored.exposure == 0.5  # sized, not the position's level


async def test_latest_and_history_queries(engine: AsyncEngine) -> None:
    spy = run(DecisionPolicy("spy", CFG), 0, len(SCRIPT))
    btc = run(DecisionPolicy("btcusdt", CFG), 0, 4, market="btcusdt")
    await write_decisions(engine, spy + btc)
    latest = await latest_decisions(engine)
    assert [(d.market, d.bar_time) for d in latest] == [("btcusdt", 3 * MIN),
                                                        ("spy", 8 * MIN)]
    assert latest[1] == spy[-1]
    assert [d.market for d in await latest_decisions(engine, ["spy", "nifty"])] == ["spy"]
    assert await latest_decisions(engine, []) == []

    h = await decision_history(engine)
    assert len(h) == len(spy) + len(btc)
    assert [d.bar_time for d in h] == sorted((d.bar_time for d in h), reverse=True)
    assert [d.bar_time for d in await decision_history(engine, "spy", limit=3)] == [
        8 * MIN, 7 * MIN, 6 * MIN]
    window = await decision_history(engine, "spy", since=2 * MIN, until=4 * MIN)
    assert [d.bar_time for d in window] == [4 * MIN, 3 * MIN, 2 * MIN]  # inclusive
    buys = await decision_history(engine, action="BUY")
    assert {(d.market, d.bar_time) for d in buys} == {
        (d.market, d.bar_time) for d in spy + btc if d.action == "BUY"}
    assert all(d.action == "BUY" for d in buys) and len(buys) == 3
    assert await decision_history(engine, "nifty") == []
    assert await decision_history(engine, limit=0) == []
    with pytest.raises(ValueError, match="action must be one of"):
        await decision_history(engine, action="buy")
    with pytest.raises(ValueError, match="limit"):
        await decision_history(engine, limit=-1)
