"""Store-level fencing (issue 16): two instances on one state store, the market handed from
the first to the second; whatever the first still writes for it is refused in the store, not
merged, whatever its own clock or lease believes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from aetherion.decision import DecisionConfig, DecisionPolicy
from aetherion.domain import Bar, Features, ModelVersion, RegimeUpdate, Transition
from aetherion.storage import schema as s
from aetherion.storage.state import StateStore
from aetherion.storage.writer import state_kinds

MIN = 60_000
CFG = DecisionConfig(cooldown_bars=0, min_confidence=0.5).resolved(["1m"])


@pytest.fixture
async def pair(sql_url: str) -> AsyncIterator[tuple[StateStore, StateStore]]:
    a, b = await StateStore.open(sql_url), await StateStore.open(sql_url)
    yield a, b
    await a.close()
    await b.close()


def decisions(market: str, start: int, n: int) -> list[dict[str, Any]]:
    """Decision rows as the state writer carries them (their model's dump)."""
    policy, out = DecisionPolicy(market, CFG), []
    for i in range(start, start + n):
        b = Bar(market, "1m", i * MIN, 100.0, 100.0, 100.0, 100.0, 1.0, 0.0, 0.0, 1, True)
        fz = RegimeUpdate(market, "fused", b.open_time, "bull", "bull", 0.9, 0.9, {"bull": 0.9},
                          1, "trend_long")
        d = policy.on_bar(b, Features(market, "1m", b.open_time, 100.0, atr=1.0), fz)
        assert d is not None
        out.append(d.model_dump())
    return out


async def write_all(st: StateStore, market: str, i: int) -> None:
    """One bar's worth of every fenced kind, through the writer's own write functions."""
    kinds = state_kinds(st)
    await kinds["decisions"][1](decisions(market, i, 1))
    await kinds["regimes"][1]([RegimeUpdate(market, "1m", i * MIN, "bull", "bull", 0.9, 0.9,
                                            {"bull": 0.9}, 1, "trend_long")])
    await kinds["transitions"][1]([Transition(market, "1m", i * MIN, "bear", "bull", 0.9)])
    await kinds["models"][1]([ModelVersion(market, "1m", i, i * MIN, i * MIN, 0, i * MIN, 10,
                                           -1.0, {}, "active", "")])


async def counts(st: StateStore, market: str) -> list[int]:
    tables = (s.decisions, s.regime_state, s.regime_transitions, s.model_versions)
    async with st.engine.connect() as conn:
        return [int((await conn.execute(select(func.count()).select_from(t).where(
            t.c.market == market))).scalar_one()) for t in tables]


async def test_a_former_owner_writes_nothing_once_the_market_is_fenced_for_another(
        pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    a.holder = lambda m: ("a", 7) if m == "btc" else None
    await a.fence("btc", "a", 7)
    await write_all(a, "btc", 1)
    assert await counts(a, "btc") == [1, 1, 1, 1] and a.fenced == 0
    # b wins the lease (a paused past its TTL, say) and fences the market before it starts it.
    b.holder = lambda m: ("b", 9)
    await b.fence("btc", "b", 9)
    await write_all(a, "btc", 2)  # a resumes, its lease still looks fine to it: refused
    assert await counts(a, "btc") == [1, 1, 1, 1] and a.fenced == 4
    await write_all(b, "btc", 3)
    assert await counts(b, "btc") == [2, 2, 2, 2] and b.fenced == 0
    # Taking the market back later is a new tenure: a new token, and the old one stays refused.
    await a.fence("btc", "a", 12)
    await write_all(a, "btc", 4)  # a's holder still says token 7
    assert await counts(a, "btc") == [2, 2, 2, 2] and a.fenced == 8
    a.holder = lambda m: ("a", 12)
    await write_all(a, "btc", 5)
    assert await counts(a, "btc") == [3, 3, 3, 3]


async def test_no_fence_row_or_no_lease_refuses_and_single_mode_writes_freely(
        pair: tuple[StateStore, StateStore]) -> None:
    a, b = pair
    a.holder = lambda m: ("a", 1)  # never fenced: no row, nothing may be written
    await write_all(a, "eth", 1)
    b.holder = lambda m: None  # fenced for b, but b no longer holds the lease
    await b.fence("eth", "b", 3)
    await write_all(b, "eth", 2)
    assert await counts(a, "eth") == [0, 0, 0, 0] and (a.fenced, b.fenced) == (4, 4)
    b.holder = None  # single mode: no fencing at all
    await write_all(b, "eth", 3)
    assert await counts(b, "eth") == [1, 1, 1, 1]


@pytest.mark.parametrize("sql_url", ["mysql"], indirect=True)
async def test_on_mysql_a_new_fence_waits_for_the_write_under_way(
        pair: tuple[StateStore, StateStore]) -> None:
    """The check holds a shared lock on the fence row until the write commits, so a takeover
    lands after it or before it, never in between."""
    a, b = pair
    a.holder = lambda m: ("a", 1)
    await a.fence("sol", "a", 1)
    async with a.engine.begin() as conn:
        assert await a.owned(conn, {"sol"}) == {"sol"}
        taking = asyncio.create_task(b.fence("sol", "b", 2))
        await asyncio.sleep(0.5)
        assert not taking.done()  # waits for a's transaction
    await asyncio.wait_for(taking, 10)
    async with a.engine.begin() as conn:
        assert await a.owned(conn, {"sol"}) == set()
