"""One market live: connector → bounded queue → pipeline, a clock for quiet markets, and the
latest values in memory for the API's read-only :class:`MarketView`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog

from aetherion.config import MarketConfig
from aetherion.domain import Bar, BookSnapshot, RegimeUpdate, Tick
from aetherion.ingest.base import Connector, Outbox
from aetherion.metrics import Metrics
from aetherion.pipeline.sinks import Sink
from aetherion.pipeline.stages import MarketPipeline

__all__ = ["LiveMarket", "MarketView"]

log = structlog.get_logger(__name__)

CLOCK_S = 0.1  # how often quiet markets get their bars closed
OPEN_BAR_EVERY = 5  # clock steps between open-bar broadcasts (0.5 s)
QUEUE_BATCHES = 1024  # connector → pipeline queue bound (batches, not ticks)


@dataclass(frozen=True, slots=True)
class MarketView:
    """What the API may read of a live market: values, never the stages themselves."""

    market: MarketConfig
    status: dict[str, Any]  # the connector's state, counters and errors
    last_tick: Tick | None
    book: BookSnapshot | None
    bars: dict[str, Bar | None]  # per timeframe: the open bar if one is building, else the last
    fused: RegimeUpdate | None  # the latest fused regime


class LiveMarket:
    def __init__(self, market: MarketConfig, pipeline: MarketPipeline, connector: Connector,
                 metrics: Metrics | None = None) -> None:
        self.market = market
        self.connector = connector
        self.pipeline = pipeline
        self.queue: Outbox = asyncio.Queue(QUEUE_BATCHES)
        self.last_tick: Tick | None = None
        self.book: BookSnapshot | None = None
        self.failed_batches = 0
        self.metrics = metrics
        self.tasks: list[asyncio.Task[None]] = []  # connector, pipeline, clock (runtime's)

    def view(self) -> MarketView:
        p = self.pipeline
        bars = {tf: p.candles.current(tf) or p.last_closed.get(tf) for tf in p.candles.timeframes}
        return MarketView(self.market, self.connector.stats.as_dict(), self.last_tick, self.book,
                          bars, p.regime.last_fused)

    async def process(self) -> None:
        """Take what the connector queued, batch by batch, until cancelled."""
        stats, sink = self.connector.stats, self.pipeline.sink
        while True:
            item = await self.queue.get()
            if isinstance(item, BookSnapshot):
                self.book = item
                sink.book(self.market, item)
                continue
            if not item:
                continue
            try:
                self.pipeline.on_ticks(item)
            except Exception:  # a bug or a value no stage expected: skip it, keep the market
                self.failed_batches += 1
                log.exception("batch skipped", market=self.market.id, ticks=len(item))
                continue
            last = item[-1]
            self.last_tick = last
            self.connector.processed(last)
            if last.recv_ns:
                now_ns = time.time_ns()
                processed, received = (now_ns - last.recv_ns) / 1e6, last.recv_ns / 1e6 - last.ts
                stats.receive_to_processed.add(processed)
                stats.exchange_to_receive.add(received)
                if self.metrics is not None:
                    lat = self.metrics.latency
                    lat.labels(self.market.id, "receive_to_processed").observe(processed / 1000)
                    lat.labels(self.market.id, "exchange_to_receive").observe(
                        max(0.0, received / 1000))

    def drain(self, until: float) -> None:
        """Process what is queued, until the queue is empty or ``until`` (monotonic) passes."""
        while not self.queue.empty() and time.monotonic() < until:
            item = self.queue.get_nowait()
            if isinstance(item, list) and item:
                self.pipeline.on_ticks(item)
                self.connector.processed(item[-1])
        self.pipeline.on_clock(time.time_ns() // 1_000_000)

    async def clock(self, publish: Sink) -> None:
        """Close the bars of a quiet market; show each open bar twice a second when it moved."""
        step = 0
        seen: dict[str, tuple[int, int]] = {}
        while True:
            await asyncio.sleep(CLOCK_S)
            self.pipeline.on_clock(time.time_ns() // 1_000_000)
            step += 1
            if step % OPEN_BAR_EVERY:
                continue
            for tf in self.pipeline.candles.timeframes:
                bar = self.pipeline.candles.current(tf)
                if bar is None:
                    continue
                key = (bar.open_time, bar.trade_count)
                if seen.get(tf) != key:
                    seen[tf] = key
                    publish.bar(self.market, bar)
