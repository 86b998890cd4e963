"""Everything the live process runs, started and stopped in order.

:meth:`Runtime.start` opens the stores, builds each market (connector, pipeline, restored state,
warm-up) and starts its tasks; :meth:`Runtime.stop` undoes it in reverse through one
:class:`~contextlib.AsyncExitStack`: connectors first, then what they queued is processed, then
the tasks, the trainer and the writers (journaling what the stores did not take by the deadline),
then the stores. Events leave through the sinks; the API side injects its publisher (the hubs)
as one of them and reads the markets through :meth:`Runtime.view`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

from aetherion.config import MarketConfig, Settings
from aetherion.ingest.base import LatencyWindow
from aetherion.ingest.registry import build_connector
from aetherion.metrics import Metrics
from aetherion.pipeline.checks import market_source
from aetherion.pipeline.cluster import ClusterNode
from aetherion.pipeline.live import LiveMarket, MarketView
from aetherion.pipeline.sinks import Fanout, MetricsSink, NullSink, Sink, StoreSink
from aetherion.pipeline.stages import StageConfig, build_pipeline
from aetherion.pipeline.startup import restore, warm
from aetherion.pipeline.trainer import WorkerTrainer
from aetherion.storage.retention import MARKET_TABLES, STATE_TABLES, plan
from aetherion.storage.state import record_sources, source_changes
from aetherion.storage.stores import Stores, open_stores

__all__ = ["Publisher", "Runtime"]

log = structlog.get_logger(__name__)

LAG_PROBE_S = 0.05
STOP_DRAIN_S = 5.0  # how long stop() goes on processing what connectors queued
JOURNAL_WAIT_S = 30.0  # how long start() waits for an earlier run's journal to be written


class Publisher(Sink, Protocol):
    """Where events are shown (the API's hubs): a sink that also reports its own counters and,
    in cluster mode, takes events already encoded (from the bus) with ``relay``."""

    def stats(self) -> dict[str, Any]: ...

    def relay(self, kind: str, market: str, text: str) -> None: ...

    def wanted(self) -> frozenset[str] | None: ...  # markets clients follow; None: all


class _Quiet(NullSink):
    def stats(self) -> dict[str, Any]:
        return {}

    def wanted(self) -> frozenset[str] | None:
        return frozenset()

    def relay(self, kind: str, market: str, text: str) -> None:
        pass


class Runtime:
    def __init__(self, settings: Settings, publisher: Publisher | None = None) -> None:
        self.settings = settings
        self.publisher: Publisher = publisher or _Quiet()
        self.markets: dict[str, LiveMarket] = {}
        self.stores: Stores | None = None  # open between start() and stop()
        self.started_ms = 0
        self.loop_lag = LatencyWindow(600)
        self.purged = 0  # rows deleted by the retention purge
        self.metrics = Metrics(self._scrape, [m.id for m in settings.markets],
                               settings.timeframes)
        self.trainer = WorkerTrainer()
        self._stack = contextlib.AsyncExitStack()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stages = StageConfig.of(settings)
        self.sink: Sink = self.publisher  # set to the stores, metrics and publisher by start()
        self._deadline = 0.0  # monotonic time by which stop() must be done
        self.cluster: ClusterNode | None = None  # cluster mode (AETHERION_NATS_URL)

    # reading ----------------------------------------------------------------------------------

    def view(self, market_id: str) -> MarketView:
        """A market run here, or (cluster mode) one run elsewhere as its events show it."""
        live = self.markets.get(market_id)
        if live is not None:
            return live.view()
        if self.cluster is not None and market_id in self.cluster.mirrors:
            return self.cluster.mirrors[market_id].view(self.settings.lease_ttl_s / 2)
        raise KeyError(market_id)

    def ownership(self) -> dict[str, dict[str, Any]]:
        """Per market: the instance that runs it and its lease's age (``None`` in one process
        or while nobody holds it)."""
        if self.cluster is None:
            return {m.id: {"owner": None, "lease_age_s": None} for m in self.settings.markets}
        owners = self.cluster.owners
        return {m.id: {"owner": owners[m.id][0] if m.id in owners else None,
                       "lease_age_s": round(owners[m.id][1], 3) if m.id in owners else None}
                for m in self.settings.markets}

    def cluster_status(self) -> dict[str, Any]:
        if self.cluster is None:
            return {"mode": "single", "instance": None, "members": [],
                    "markets": sorted(self.markets)}
        return self.cluster.status()

    def store_status(self) -> dict[str, object]:
        s = self.settings
        out: dict[str, object] = {"sql": s.sql_url.split("://", 1)[0],
                                  "market_store": "mongodb" if s.mongo_url else "sql"}
        if self.stores is not None:
            out.update(self.stores.status())
        out["purged_rows"] = self.purged
        out["event_loop_lag_ms"] = self.loop_lag.summary()
        return out

    def _scrape(self) -> dict[str, Any]:
        writers = self.stores.writers if self.stores is not None else ()
        return {
            "connectors": {mid: live.connector.stats.as_dict()
                           for mid, live in self.markets.items()},
            "stores": {w.name: {"backlog": w.backlog, "errors": w.errors} for w in writers},
            **self.publisher.stats(),
        }

    # start / stop -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        s = self.settings
        stack = self._stack
        self.stores = stores = await open_stores(s, JOURNAL_WAIT_S)
        stack.push_async_callback(self._close, stores)
        # A market id's stored data belongs to its source: never mixed with another's.
        sources = {m.id: market_source(m) for m in s.markets}
        if changed := await source_changes(stores.state, sources):
            raise RuntimeError("; ".join(changed))
        await record_sources(stores.state, sources)
        store_sink = StoreSink(stores.market_writer, stores.state_writer)
        self.started_ms = time.time_ns() // 1_000_000
        stack.push_async_callback(self._stop_markets)
        if s.nats_url:  # cluster mode: the rounds start the markets this instance owns
            self.cluster = node = ClusterNode(self, ClusterNode.settings_of(s))
            stores.state.holder = node.holder  # fencing: a market's state only while it is ours
            await node.open()
            stack.push_async_callback(node.close)
            # Events reach this instance's clients through the bus, like every other market's.
            self.sink = Fanout(store_sink, MetricsSink(self.metrics), node.bus_sink,
                               gate=node.mine)
            await node.start()
        else:
            self.sink = Fanout(store_sink, MetricsSink(self.metrics), self.publisher)
            for m in s.markets:
                await self.start_market(m)
        # Measured from here: before, the server is not serving yet (start-up warm-up).
        self._spawn(self._watch_loop_lag(), "loop-lag")
        self._spawn(self._purge_loop(), "retention")
        # What start-up loaded (modules, warm-up history, models) lives as long as the process;
        # left to the collector, every full collection walks all of it (about 50 ms on a 2-core
        # machine, a stall for every client and bar close). Frozen, it is never walked.
        gc.collect()
        gc.freeze()

    async def start_market(self, m: MarketConfig, sink: Sink | None = None) -> LiveMarket:
        """Build one market, pick up where the stores left it, and start its three tasks."""
        assert self.stores is not None  # noqa: S101 - called between start and stop
        stores = self.stores
        pipeline = build_pipeline(m, self.stages, sink or self.sink, self.trainer)
        live = LiveMarket(m, pipeline, build_connector(m, self.settings, stores.state),
                          self.metrics)
        await restore(live, stores.state, stores.market)
        await warm(live, self.settings, stores.state, stores.market)
        self.markets[m.id] = live
        live.tasks = [
            self._spawn(self._guard(m, live.connector.run(live.queue), "connector"),
                        f"{m.id}:connector"),
            self._spawn(self._guard(m, live.process(), "pipeline"), f"{m.id}:pipeline"),
            self._spawn(self._guard(m, live.clock(pipeline.sink), "clock"), f"{m.id}:clock"),
        ]
        log.info("market started", market=m.id, venue=m.venue, connector=m.connector)
        return live

    def time_left(self) -> float:
        """Seconds until a stop in progress must be done (its deadline); else the whole
        stop budget."""
        if not self._deadline:
            return self.settings.stop_deadline_ms / 1000
        return max(0.0, self._deadline - time.monotonic())

    async def stop_market(self, market_id: str, drain: bool = True) -> None:
        """Stop one market: its connector first, then (``drain``) what it queued is processed
        and the checkpoint saved, then its other tasks. Without ``drain`` it stops acting at
        once (a market whose lease is lost: another instance may own it already)."""
        live = self.markets.pop(market_id, None)
        if live is None:
            return
        connector, *rest = live.tasks
        connector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connector
        live.connector.stats.state = "stopped"
        if drain:
            # Take what was queued, for a while: the checkpoint is what was processed, so what
            # is left when the time is up comes back by backfill on the next start.
            live.drain(time.monotonic() + min(STOP_DRAIN_S, self.time_left()))
            with contextlib.suppress(TimeoutError):  # not saved: the next start backfills more
                await asyncio.wait_for(live.connector.save_checkpoint(),
                                       max(0.1, self.time_left()))
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def stop(self) -> None:
        """Bounded (``stop_deadline_ms``): a store that does not answer by then gets nothing
        more; the writers journal what it did not take, for the next start."""
        began = time.monotonic()
        self._deadline = began + self.settings.stop_deadline_ms / 1000
        writers = self.stores.writers if self.stores is not None else ()
        await self._stack.aclose()
        log.info("stopped", seconds=round(time.monotonic() - began, 2),
                 journaled={w.name: w.backlog for w in writers if w.backlog})

    async def _stop_markets(self) -> None:
        """Every connector first (none feeds a queue any more), then each market in turn, then
        the process's own tasks."""
        for live in self.markets.values():
            live.tasks[0].cancel()
        for mid in list(self.markets):
            await self.stop_market(mid)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _close(self, stores: Stores) -> None:
        """The writers (up to the deadline) and a fit still running, side by side."""
        await asyncio.gather(stores.close(max(0.0, self._deadline - time.monotonic())),
                             self.trainer.close())

    # background -------------------------------------------------------------------------------

    async def _watch_loop_lag(self) -> None:
        """How late the event loop wakes up: the responsiveness everyone else sees."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            lag = max(0.0, time.perf_counter() - t0 - LAG_PROBE_S)
            self.loop_lag.add(lag * 1000)
            self.metrics.loop_lag.observe(lag)

    async def _purge_loop(self) -> None:
        """Delete what is past its retention (see ``storage/retention.py``), now and then."""
        s = self.settings
        while True:
            assert self.stores is not None  # noqa: S101 - the task runs between start and stop
            now = time.time_ns() // 1_000_000
            try:
                gone = {**await self.stores.market.purge(plan(s, now, MARKET_TABLES)),
                        **await self.stores.state.purge(plan(s, now, STATE_TABLES))}
                self.purged += sum(gone.values())
                if any(gone.values()):
                    log.info("retention purge", **{k: v for k, v in gone.items() if v})
            except Exception as e:  # a store that is down: try again later
                log.warning("retention purge failed", error=str(e)[:200])
            await asyncio.sleep(s.retention_interval_s)

    async def _guard(self, market: MarketConfig, coro: Coroutine[Any, Any, None],
                     stage: str) -> None:
        """Run one market task; a crash is logged with the market, never silent."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("market task failed", market=market.id, stage=stage)
            if stage == "connector" and market.id in self.markets:  # said in the status too
                self.markets[market.id].connector.stats.on_error(e, state="failed")
