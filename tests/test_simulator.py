"""The simulated market as a connector: it never outruns the pipeline it feeds."""

from __future__ import annotations

import asyncio

from aetherion.config import MarketConfig, Settings
from aetherion.domain import Tick
from aetherion.ingest.base import Outbox
from aetherion.ingest.simulator import MAX_STEP_MS, SimulatorConnector


async def test_a_blocked_simulator_skips_time_instead_of_piling_trades_up() -> None:
    market = MarketConfig(id="btcusdt", venue="crypto", connector="simulator", symbol="BTC/USDT")
    conn = SimulatorConnector(market, Settings(sim_rate=2000))  # type: ignore[call-arg]
    out: Outbox = asyncio.Queue(1)
    task = asyncio.create_task(conn.run(out))
    try:
        await asyncio.sleep(1.5)  # nobody takes from the queue: the simulator waits on put()
        batches: list[list[Tick]] = []
        while len(batches) < 4:
            item = await asyncio.wait_for(out.get(), 2)
            if isinstance(item, list):
                batches.append(item)
    finally:
        task.cancel()
    # The first step after the wait covers at most MAX_STEP_MS of trades, not the 1.5 s it
    # was blocked; the rest is counted as skipped.
    assert conn.skipped_ms > 800
    for b in batches:
        assert b[-1].ts - b[0].ts <= MAX_STEP_MS
        assert len(b) < 2000 * MAX_STEP_MS / 1000 * 1.5
