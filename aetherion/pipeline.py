"""Wiring of the stages per market, and the start and stop of the whole process.

:class:`MarketPipeline` is the synchronous chain of one market (candles → features → regime →
decision). Live and replay both drive it; only the :class:`Sink` that receives its events
differs. :class:`Runtime` owns what the live process runs: stores, the buffered writer, the hubs
and, per market, a connector task, a processing task and a clock task.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

import structlog

from aetherion.api.hub import Hub, encode
from aetherion.api.payloads import bar_json, features_json, tick_json
from aetherion.config import MarketConfig, Settings
from aetherion.domain import Bar, BookSnapshot, Features, Tick, timeframe_ms
from aetherion.features.candles import CandleEngine
from aetherion.features.engine import FeatureEngine
from aetherion.ingest.base import Checkpoints, Connector, Outbox

__all__ = [
    "CONNECTORS", "LiveMarket", "MarketPipeline", "Runtime", "Sink", "make_connector", "preflight",
]

log = structlog.get_logger(__name__)

CLOCK_S = 0.1  # how often quiet markets get their bars closed
OPEN_BAR_EVERY = 5  # clock steps between open-bar broadcasts (0.5 s)
QUEUE_BATCHES = 1024  # connector → pipeline queue bound (batches, not ticks)


class Sink(Protocol):
    """Where a pipeline's events go: stores and hubs when live, a report when replaying."""

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None: ...

    def bar(self, market: MarketConfig, bar: Bar) -> None: ...

    def history_bar(self, market: MarketConfig, bar: Bar) -> None: ...

    def features(self, market: MarketConfig, f: Features) -> None: ...


class MarketPipeline:
    """The synchronous chain of one market. Bars with ``revision > 0`` are stored and shown but
    never re-run through features, regime or decision (those stay what was known then)."""

    def __init__(self, market: MarketConfig, settings: Settings, sink: Sink) -> None:
        self.market = market
        self.sink = sink
        self.candles = CandleEngine(market.id, settings.timeframes, settings.bar_grace_ms)
        self.features = {tf: FeatureEngine(market.id, tf) for tf in settings.timeframes}
        self.last_closed: dict[str, Bar] = {}
        self.last_features: dict[str, Features] = {}

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        self.sink.ticks(self.market, ticks)
        self._bars(self.candles.on_ticks(ticks))

    def on_clock(self, now_ms: int) -> None:
        self._bars(self.candles.on_clock(now_ms))

    def flush(self) -> None:
        self._bars(self.candles.flush())

    def warm(self, timeframe: str, bars: Sequence[Bar]) -> None:
        """Closed bars from the venue's history (oldest first), before any live trade: they set
        up the features (and the regime model's training window) as if they had been seen."""
        fe = self.features[timeframe]
        for bar in bars:
            if fe.last_open_time is not None and bar.open_time <= fe.last_open_time:
                continue
            self.sink.history_bar(self.market, bar)
            self.last_closed[timeframe] = bar
            f = fe.on_bar(bar)
            self.last_features[timeframe] = f
            self.sink.features(self.market, f)

    def _bars(self, bars: list[Bar]) -> None:
        if not bars:
            return
        closes: dict[int, list[tuple[Bar, Features]]] = {}
        for bar in bars:
            self.sink.bar(self.market, bar)
            fe = self.features[bar.timeframe]
            if bar.revision or (fe.last_open_time is not None
                                and bar.open_time <= fe.last_open_time):
                fe.on_revision(bar)  # a revision, or a bar older than one already seen
                continue
            self.last_closed[bar.timeframe] = bar
            f = fe.on_bar(bar)
            self.last_features[bar.timeframe] = f
            self.sink.features(self.market, f)
            closes.setdefault(bar.close_time, []).append((bar, f))
        for close_time in sorted(closes):
            self._on_close(close_time, closes[close_time])

    def _on_close(self, close_time: int, group: list[tuple[Bar, Features]]) -> None:
        """Every timeframe whose bar closed at ``close_time`` has been fed its features."""


# ---- connectors ---------------------------------------------------------------------------

CONNECTORS: dict[str, str] = {
    "simulator": "aetherion.ingest.simulator:SimulatorConnector",
}


def preflight(settings: Settings) -> list[str]:
    """What would stop the markets from starting, one phrase per problem (empty when fine)."""
    problems = []
    for m in settings.markets:
        if m.connector not in CONNECTORS:
            problems.append(f"market {m.id}: connector {m.connector!r} is not available "
                            f"(available: {', '.join(sorted(CONNECTORS))})")
    return problems


def make_connector(
    market: MarketConfig, settings: Settings, checkpoints: Checkpoints | None
) -> Connector:
    path = CONNECTORS.get(market.connector)
    if path is None:
        raise ValueError(f"market {market.id}: connector {market.connector!r} is not available")
    module, _, name = path.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), name)
    return cls(market, settings, checkpoints)


# ---- the live process ----------------------------------------------------------------------


class LiveMarket:
    """One market live: connector → bounded queue → pipeline; the latest values in memory."""

    def __init__(self, market: MarketConfig, settings: Settings, connector: Connector,
                 sink: Sink) -> None:
        self.market = market
        self.connector = connector
        self.pipeline = MarketPipeline(market, settings, sink)
        self.queue: Outbox = asyncio.Queue(QUEUE_BATCHES)
        self.last_tick: Tick | None = None
        self.book: BookSnapshot | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def snapshot(self) -> dict[str, Any]:
        """Last price, best bid/ask, the latest bar per timeframe (open if one is building)."""
        bars: dict[str, Any] = {}
        for tf in self.pipeline.candles.timeframes:
            bar = self.pipeline.candles.current(tf) or self.pipeline.last_closed.get(tf)
            bars[tf] = bar_json(bar) if bar else None
        book, tick = self.book, self.last_tick
        return {
            "market": self.market.id, "venue": self.market.venue,
            "ts": tick.ts if tick else None, "price": tick.price if tick else None,
            "bid": book.bids[0][0] if book and book.bids else None,
            "ask": book.asks[0][0] if book and book.asks else None,
            "bars": bars, "regime": "unknown", "confidence": None, "strategy": None,
        }

    async def process(self, on_book: Any) -> None:
        stats = self.connector.stats
        while True:
            item = await self.queue.get()
            if isinstance(item, BookSnapshot):
                self.book = item
                on_book(self.market, item)
                continue
            if not item:
                continue
            self.pipeline.on_ticks(item)
            last = item[-1]
            self.last_tick = last
            if last.recv_ns:
                now_ns = time.time_ns()
                stats.receive_to_processed.add((now_ns - last.recv_ns) / 1e6)
                stats.exchange_to_receive.add(last.recv_ns / 1e6 - last.ts)

    async def clock(self, publish_open: Any) -> None:
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
                    publish_open(bar)


class Runtime:
    """Everything the live process runs; the app's lifespan starts and stops it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hubs = {name: Hub(name) for name in ("market", "regime", "decision")}
        self.markets: dict[str, LiveMarket] = {}
        self.started_ms = 0
        self._stores: Any = None

    # Sink ------------------------------------------------------------------------------------

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        self.writer.put_ticks(list(ticks))
        hub = self.hubs["market"]
        if hub.client_count:
            for t in ticks:
                hub.publish(market.id, encode("tick", market.id, tick_json(t)))

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        self.writer.put_bars([bar])
        self.hubs["market"].publish(market.id, encode("bar", market.id, bar_json(bar)))

    def history_bar(self, market: MarketConfig, bar: Bar) -> None:
        self.writer.put_history_bars([bar])

    def features(self, market: MarketConfig, f: Features) -> None:
        self.writer.put_features([f])
        self.hubs["market"].publish(market.id, encode("features", market.id, features_json(f)))

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        self.writer.put_books(market.venue, [book])

    def _publish_open(self, bar: Bar) -> None:
        self.hubs["market"].publish(bar.market, encode("bar", bar.market, bar_json(bar)))

    def store_status(self) -> dict[str, object]:
        writer = getattr(self, "writer", None)
        return {
            "sql": self.settings.sql_url.split("://", 1)[0],
            "market_store": "mongodb" if self.settings.mongo_url else "sql",
            "backlog": writer.backlog if writer else 0,
            "errors": writer.errors if writer else 0,
        }

    # start / stop ----------------------------------------------------------------------------

    async def start(self) -> None:
        from aetherion.storage.market import open_market_store
        from aetherion.storage.state import StateStore
        from aetherion.storage.writer import BufferedWriter

        s = self.settings
        self.state = await StateStore.open(s.sql_url)
        self.store = await open_market_store(s, self.state.engine)
        self.writer = BufferedWriter(self.store, s)
        self.writer.start()
        self.started_ms = time.time_ns() // 1_000_000
        for m in s.markets:
            live = LiveMarket(m, s, make_connector(m, s, self.state), self)
            self.markets[m.id] = live
            await self._warm(live)
            live.tasks = [
                asyncio.create_task(self._guard(m, live.connector.run(live.queue), "connector")),
                asyncio.create_task(self._guard(m, live.process(self.book), "pipeline")),
                asyncio.create_task(self._guard(m, live.clock(self._publish_open), "clock")),
            ]
            log.info("market started", market=m.id, venue=m.venue, connector=m.connector)

    async def _warm(self, live: LiveMarket) -> None:
        """Warm each timeframe up with the venue's recent history (best effort)."""
        n = self.settings.history_bars
        if not n:
            return
        now = time.time_ns() // 1_000_000
        for tf in live.pipeline.candles.timeframes:
            try:
                bars = await live.connector.history(tf, n, now - now % timeframe_ms(tf))
            except Exception as e:  # a venue without history still runs, just colder
                log.warning("history unavailable", market=live.market.id, timeframe=tf,
                            error=str(e) or type(e).__name__)
                continue
            live.pipeline.warm(tf, bars)
            log.info("warmed up from history", market=live.market.id, timeframe=tf,
                     bars=len(bars))

    async def _guard(self, market: MarketConfig, coro: Any, stage: str) -> None:
        """Run one market task; a crash is logged with the market, never silent."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("market task failed", market=market.id, stage=stage)
            if stage == "connector":
                self.markets[market.id].connector.stats.state = "failed"

    async def stop(self) -> None:
        tasks = [t for live in self.markets.values() for t in live.tasks]
        # Connectors first, then drain what they queued, then the rest.
        for live in self.markets.values():
            live.tasks[0].cancel()
        for live in self.markets.values():
            with contextlib.suppress(asyncio.CancelledError):
                await live.tasks[0]
            live.connector.stats.state = "stopped"
            while not live.queue.empty():
                item = live.queue.get_nowait()
                if isinstance(item, list) and item:
                    live.pipeline.on_ticks(item)
            live.pipeline.on_clock(time.time_ns() // 1_000_000)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hasattr(self, "writer"):
            await self.writer.close()
        if hasattr(self, "store"):
            await self.store.close()
        if hasattr(self, "state"):
            await self.state.close()
        log.info("stopped")
