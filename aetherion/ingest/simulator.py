"""The simulator connector: a :class:`~aetherion.ingest.simulated_market.SimulatedMarket`
streamed in real time (trades every ``STEP_S``, a book every ``BOOK_INTERVAL_S``): the
connector of the default markets, so ``aetherion run`` works with no network. Its history is the
process's own bars, and it resumes from the newest stored price
(:class:`~aetherion.ingest.base.Resumable`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import structlog

from aetherion.domain import Bar
from aetherion.ingest.base import Checkpoints, Connector, ConnectorConfig, Outbox
from aetherion.ingest.simulated_market import (
    REGIME_PARAMS,
    TRANSITIONS,
    SimBars,
    SimulatedMarket,
)

__all__ = [
    "MAX_STEP_MS", "REGIME_PARAMS", "TRANSITIONS", "SimBars", "SimulatedMarket",
    "SimulatorConfig", "SimulatorConnector"]

log = structlog.get_logger(__name__)

BOOK_INTERVAL_S = 0.25
STEP_S = 0.05
# A step that comes late (the pipeline is behind) simulates at most this much time: the rest is
# skipped, as if the market had been quiet, so a simulator never outruns what it feeds.
MAX_STEP_MS = 500


@dataclass(frozen=True, slots=True)
class SimulatorConfig(ConnectorConfig):
    """``seed`` (``AETHERION_SIM_SEED``), ``regime_seconds`` (mean calm stay) and ``rate``
    (trades per second); the market's ``start_price`` (100 when unset) and venue."""

    seed: int = 7
    regime_seconds: float = 1800.0
    rate: float = 50.0


class SimulatorConnector(Connector):
    """Streams a :class:`SimulatedMarket` in real time; resumable from a stored price."""

    name = "simulator"
    config: SimulatorConfig
    config_type: ClassVar[type[ConnectorConfig]] = SimulatorConfig

    def __init__(self, config: SimulatorConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        self.sim = self._market(config.seed)
        self.skipped_ms = 0  # simulated time skipped because the pipeline was behind
        self._next_skip_log = 0.0

    def _market(self, seed: int, price: float | None = None) -> SimulatedMarket:
        c, m = self.config, self.market
        return SimulatedMarket(m.id, m.venue, m.start_price or 100.0, seed, c.regime_seconds,
                               c.rate, price)

    def resume(self, price: float, ts_ms: int) -> None:
        """Go on from ``price``, the newest stored of this market (at ``ts_ms``), not from
        ``start_price``. The seed is mixed with ``ts_ms``: a restart makes new moves, and the
        same seed and store make the same ones."""
        if not (math.isfinite(price) and price > 0):
            return
        self.sim = self._market(self.config.seed * 1_000_003 + ts_ms, price)
        log.info("simulator resumes", market=self.market.id, price=price, stored_at=ts_ms)

    async def run(self, out: Outbox) -> None:
        self.stats.state = "live"
        last = time.time_ns() // 1_000_000
        next_book = 0.0
        while True:
            await asyncio.sleep(STEP_S)
            now = time.time_ns() // 1_000_000
            if now - last > MAX_STEP_MS:
                self.skipped_ms += now - last - MAX_STEP_MS
                if (mono := time.monotonic()) >= self._next_skip_log:  # a line in 10 s at most
                    self._next_skip_log = mono + 10
                    log.warning("simulator behind the pipeline; time skipped",
                                market=self.market.id, total_skipped_ms=self.skipped_ms)
                last = now - MAX_STEP_MS
            batch = self.sim.trades(last, now, self.config.rate)
            last = now
            if batch:
                self.stats.on_messages(len(batch))
                await out.put(batch)
            if time.monotonic() >= next_book:
                next_book = time.monotonic() + BOOK_INTERVAL_S
                await out.put(self.sim.book(now))

    async def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        return self.sim.history(timeframe, limit, end_ms)
