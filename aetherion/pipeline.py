"""Wiring of the stages per market, and the start and stop of the whole process.

:class:`MarketPipeline` is the synchronous chain of one market (candles → features → regime →
decision). Live and replay both drive it; only the :class:`Sink` that receives its events
differs. :class:`Runtime` owns what the live process runs: stores, the buffered writer, the hubs
and, per market, a connector task, a processing task and a clock task.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import importlib
import logging
import multiprocessing
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import structlog
from numpy.typing import ArrayLike
from sqlalchemy.engine import make_url

from aetherion.api.hub import Hub, encode
from aetherion.api.payloads import (
    bar_json,
    features_json,
    regime_json,
    tick_json,
    transition_json,
)
from aetherion.config import MarketConfig, Settings
from aetherion.decision.config import DecisionConfig
from aetherion.decision.model import Decision, PolicyState
from aetherion.decision.policy import DecisionPolicy
from aetherion.domain import (
    Bar,
    BookSnapshot,
    Features,
    ModelVersion,
    RegimeUpdate,
    Tick,
    Transition,
    timeframe_ms,
)
from aetherion.features.candles import CandleEngine
from aetherion.features.engine import FeatureEngine
from aetherion.ingest.base import Checkpoints, Connector, LatencyWindow, Outbox
from aetherion.metrics import Metrics
from aetherion.regime.engine import RegimeEngine
from aetherion.regime.model import FitResult, TrainRequest, fit

__all__ = [
    "CONNECTORS", "ListSink", "LiveMarket", "MarketPipeline", "Runtime", "Sink", "Trainer",
    "make_connector", "market_source", "preflight", "train_inline",
]

log = structlog.get_logger(__name__)

TICKS_PER_MESSAGE = 500  # a `ticks` message stays well under a client's usual 1 MiB limit

LAG_PROBE_S = 0.05
CLOCK_S = 0.1  # how often quiet markets get their bars closed
OPEN_BAR_EVERY = 5  # clock steps between open-bar broadcasts (0.5 s)
STOP_DRAIN_S = 5.0  # how long stop() goes on processing what connectors queued
JOURNAL_WAIT_S = 30.0  # how long start() waits for an earlier run's journal to be written
QUEUE_BATCHES = 1024  # connector → pipeline queue bound (batches, not ticks)
PREFLIGHT_STORE_S = 5.0  # how long the start-up check waits to read the recorded sources


class Sink(Protocol):
    """Where a pipeline's events go: stores and hubs when live, a report when replaying."""

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None: ...

    def bar(self, market: MarketConfig, bar: Bar) -> None: ...

    def history_bar(self, market: MarketConfig, bar: Bar) -> None: ...

    def features(self, market: MarketConfig, f: Features) -> None: ...

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None: ...

    def transition(self, market: MarketConfig, t: Transition) -> None: ...

    def model(self, market: MarketConfig, mv: ModelVersion) -> None: ...

    def decision(self, market: MarketConfig, d: Decision) -> None: ...


class ListSink:
    """Keeps every event in lists (replay, tests); ticks are counted, not kept."""

    def __init__(self) -> None:
        self.n_ticks = 0
        self.bars: list[Bar] = []
        self.history_bars: list[Bar] = []
        self.features_: list[Features] = []
        self.regimes: list[RegimeUpdate] = []
        self.transitions: list[Transition] = []
        self.models: list[ModelVersion] = []
        self.decisions: list[Decision] = []

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        self.n_ticks += len(ticks)

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        self.bars.append(bar)

    def history_bar(self, market: MarketConfig, bar: Bar) -> None:
        self.history_bars.append(bar)

    def features(self, market: MarketConfig, f: Features) -> None:
        self.features_.append(f)

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        self.regimes.append(u)

    def transition(self, market: MarketConfig, t: Transition) -> None:
        self.transitions.append(t)

    def model(self, market: MarketConfig, mv: ModelVersion) -> None:
        self.models.append(mv)

    def decision(self, market: MarketConfig, d: Decision) -> None:
        self.decisions.append(d)


#: Runs a training request somewhere and hands the result to ``pipeline.install``.
Trainer = Callable[["MarketPipeline", TrainRequest], None]


def _worker_init() -> None:
    """Training workers leave Ctrl-C to the server, which shuts them down in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)  # judged by the fit's own checks


def train_inline(pipeline: MarketPipeline, req: TrainRequest) -> None:
    """Fit at once (replay, tests): the model takes effect from the next bar."""
    pipeline.install(fit(req))


class MarketPipeline:
    """The synchronous chain of one market. Bars with ``revision > 0`` are stored and shown but
    never re-run through features, regime or decision (those stay what was known then)."""

    def __init__(self, market: MarketConfig, settings: Settings, sink: Sink,
                 trainer: Trainer = train_inline) -> None:
        self.market = market
        self.sink = sink
        self.trainer = trainer
        self.candles = CandleEngine(market.id, settings.timeframes, settings.bar_grace_ms)
        self.features = {tf: FeatureEngine(market.id, tf) for tf in settings.timeframes}
        self.regime = RegimeEngine(market.id, self.candles.timeframes, settings)
        self.policy = DecisionPolicy(market.id, DecisionConfig.from_settings(settings))
        self.last_closed: dict[str, Bar] = {}
        self.last_features: dict[str, Features] = {}
        self.event_ms = 0  # close time of the latest bars fed through (event time)

    def on_ticks(self, ticks: Sequence[Tick]) -> None:
        self.sink.ticks(self.market, ticks)
        self._bars(self.candles.on_ticks(ticks))

    def on_trades(self, ts: ArrayLike, price: ArrayLike, size: ArrayLike,
                  side: ArrayLike) -> None:
        """Columnar trades (replay): no Tick objects on the way, and none kept."""
        self._bars(self.candles.on_trades(ts, price, size, side))

    def on_clock(self, now_ms: int) -> None:
        self._bars(self.candles.on_clock(now_ms))

    def on_bars(self, bars: Sequence[Bar]) -> None:
        """Closed bars of the finest timeframe (candle input)."""
        self._bars(self.candles.on_bars(bars))

    def flush(self) -> None:
        self._bars(self.candles.flush())

    def warm(self, history: Mapping[str, Sequence[Bar]]) -> None:
        """Closed bars from the venue's history (oldest first per timeframe), before any live
        trade: they set features and the regime filters up as if they had been seen, and the
        first models train on them."""
        for tf, bars in history.items():
            fe = self.features[tf]
            for bar in bars:
                if fe.last_open_time is not None and bar.open_time <= fe.last_open_time:
                    continue
                self.sink.history_bar(self.market, bar)
                self.last_closed[tf] = bar
                f = fe.on_bar(bar)
                self.last_features[tf] = f
                self.sink.features(self.market, f)
                self.regime.on_features(f, schedule=False)
                self.policy.observe(bar)
                self.event_ms = max(self.event_ms, bar.close_time)
        finest = self.candles.timeframes[0]
        self.candles.seed(history.get(finest, ()))
        self.regime.end_warm_up()
        self._train()
        self._event()

    def restore_policy(self, state: PolicyState) -> None:
        """The position, cooldown and last decided bar as the store has them (a restart)."""
        self.policy = DecisionPolicy(self.market.id, self.policy.cfg, state)

    def install(self, result: FitResult, effective_from: int | None = None) -> ModelVersion:
        """A finished fit: in force from the next bar after what has been fed so far (or from
        ``effective_from``, when replaying what a live run did)."""
        mv = self.regime.install(
            result, self.event_ms if effective_from is None else effective_from)
        self.sink.model(self.market, mv)
        track = self.regime.tracks[mv.timeframe]
        if mv.status == "active" and track.version == mv.version and track.pending is None:
            now = self.regime.current(mv.timeframe)  # in force at once: say what it sees
            if now is not None:
                self.sink.regime(self.market, now)
        return mv

    def _train(self) -> None:
        for req in self.regime.training_due():
            self.trainer(self, req)

    def _event(self) -> None:
        """Event time moved on: a trainer that replays a live run installs what arrived then."""
        hook = getattr(self.trainer, "on_event", None)
        if hook is not None:
            hook(self)

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
        for _, f in group:
            u = self.regime.on_features(f)
            if u is not None:
                self.sink.regime(self.market, u)
        fused, transition = self.regime.fuse(close_time)
        self.sink.regime(self.market, fused)
        if transition is not None:
            self.sink.transition(self.market, transition)
        for bar, f in group:
            if bar.timeframe == self.policy.timeframe:
                d = self.policy.on_bar(bar, f, fused)
                if d is not None:
                    self.sink.decision(self.market, d)
        self.event_ms = max(self.event_ms, close_time)
        self._train()
        self._event()


# ---- connectors ---------------------------------------------------------------------------

CONNECTORS: dict[str, str] = {
    "simulator": "aetherion.ingest.simulator:SimulatorConnector",
    "binance": "aetherion.ingest.binance:BinanceConnector",
    "ccxt": "aetherion.ingest.ccxt_pro:CcxtConnector",
    "alpaca": "aetherion.ingest.alpaca:AlpacaConnector",
    "kite": "aetherion.ingest.kite:KiteConnector",
}


def preflight(settings: Settings) -> list[str]:
    """What would stop the markets from starting, one phrase per problem (empty when fine)."""
    problems = []
    for m in settings.markets:
        if m.connector not in CONNECTORS:
            problems.append(f"market {m.id}: connector {m.connector!r} is not available "
                            f"(available: {', '.join(sorted(CONNECTORS))})")
            continue
        module = importlib.import_module(CONNECTORS[m.connector].partition(":")[0])
        check = getattr(module, "check_credentials", None)  # connectors that need secrets
        line = check(m) if check is not None else None
        if line:
            problems.append(line)
    try:
        from aetherion.decision.config import DecisionConfig

        DecisionConfig.from_settings(settings)
    except ValueError as e:
        problems.append(f"bad setting: AETHERION_DECISION_TIMEFRAME: {e}")
    problems.extend(asyncio.run(_changed_sources(settings)))
    return problems


def market_source(m: MarketConfig) -> dict[str, str]:
    """What a market id's stored data belongs to: its connector, symbol and ccxt exchange."""
    source = {"connector": m.connector, "symbol": m.symbol}
    if m.connector == "ccxt":
        source["exchange"] = m.exchange or ""
    return source


async def _changed_sources(settings: Settings) -> list[str]:
    """Markets whose configured source is not the one their stored data came from. A store that
    cannot be read yet (unreachable, not created) is left to the store check that follows and to
    :meth:`Runtime.start`, which checks again."""
    from aetherion.storage.state import StateStore, source_changes

    sources = {m.id: market_source(m) for m in settings.markets}
    state: StateStore | None = None
    try:
        async with asyncio.timeout(PREFLIGHT_STORE_S):
            state = await StateStore.open(settings.sql_url, migrate=False)
            return await source_changes(state, sources)
    except Exception:  # noqa: BLE001 - said by the store check, or at start
        return []
    finally:
        if state is not None:
            await state.close()


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
                 sink: Sink, trainer: Trainer) -> None:
        self.market = market
        self.connector = connector
        self.pipeline = MarketPipeline(market, settings, sink, trainer)
        self.queue: Outbox = asyncio.Queue(QUEUE_BATCHES)
        self.last_tick: Tick | None = None
        self.book: BookSnapshot | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.failed_batches = 0
        self.latency: Any = None  # the process's latency histogram, when metrics are kept

    def snapshot(self) -> dict[str, Any]:
        """Last price, best bid/ask, the latest bar per timeframe (open if one is building),
        and the fused regime with its confidence and the active strategy."""
        bars: dict[str, Any] = {}
        for tf in self.pipeline.candles.timeframes:
            bar = self.pipeline.candles.current(tf) or self.pipeline.last_closed.get(tf)
            bars[tf] = bar_json(bar) if bar else None
        book, tick = self.book, self.last_tick
        fused = self.pipeline.regime.last_fused
        return {
            "market": self.market.id, "venue": self.market.venue,
            "ts": tick.ts if tick else None, "price": tick.price if tick else None,
            "bid": book.bids[0][0] if book and book.bids else None,
            "ask": book.asks[0][0] if book and book.asks else None,
            "bars": bars,
            "regime": fused.regime if fused else "unknown",
            "confidence": fused.confidence if fused else 0.0,
            "regime_raw": fused.regime_raw if fused else "unknown",
            "confidence_raw": fused.confidence_raw if fused else 0.0,
            "strategy": fused.strategy if fused else None,
        }

    async def process(self, on_book: Callable[[MarketConfig, BookSnapshot], None]) -> None:
        stats = self.connector.stats
        while True:
            item = await self.queue.get()
            if isinstance(item, BookSnapshot):
                self.book = item
                on_book(self.market, item)
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
                if self.latency is not None:
                    self.latency.labels(self.market.id, "receive_to_processed").observe(
                        processed / 1000)
                    self.latency.labels(self.market.id, "exchange_to_receive").observe(
                        max(0.0, received / 1000))

    async def clock(self, publish_open: Callable[[Bar], None]) -> None:
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
        self.loop_lag = LatencyWindow(600)
        self._pool: ProcessPoolExecutor | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.latest_decisions: dict[str, Decision] = {}
        self.ws_counts = {"open": 0, "origin": 0, "limit": 0}  # the WebSocket gate's
        self.purged = 0  # rows deleted by the retention purge
        self.metrics = Metrics(self._scrape, [m.id for m in settings.markets],
                               settings.timeframes)

    def _scrape(self) -> dict[str, Any]:
        writers = [w for w in (getattr(self, "writer", None), getattr(self, "state_writer", None))
                   if w is not None]
        return {
            "connectors": {mid: live.connector.stats.as_dict()
                           for mid, live in self.markets.items()},
            "stores": {w.name: {"backlog": w.backlog, "errors": w.errors} for w in writers},
            "ws_refused": {k: v for k, v in self.ws_counts.items() if k != "open"},
            "hubs": {name: {"clients": h.client_count, "messages": h.messages,
                            "dropped": h.dropped_clients} for name, h in self.hubs.items()},
        }

    # Sink ------------------------------------------------------------------------------------

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        self.metrics.ticks.labels(market.id).inc(len(ticks))
        self.writer.put("ticks", list(ticks))
        hub = self.hubs["market"]
        if not hub.client_count:
            return
        # A batch goes out as one message: a send per client costs tens of microseconds, so a
        # message per trade to every client would not keep up with a busy market.
        if len(ticks) == 1:
            hub.publish(market.id, encode("tick", market.id, tick_json(ticks[0])))
            return
        for i in range(0, len(ticks), TICKS_PER_MESSAGE):
            chunk = [tick_json(t) for t in ticks[i:i + TICKS_PER_MESSAGE]]
            hub.publish(market.id, encode("ticks", market.id, {"ticks": chunk}))

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        if not bar.revision:
            self.metrics.bars.labels(market.id, bar.timeframe).inc()
        self.writer.put("bars", [bar])
        self.hubs["market"].publish(market.id, encode("bar", market.id, bar_json(bar)))

    def history_bar(self, market: MarketConfig, bar: Bar) -> None:
        self.writer.put("history_bars", [bar])

    def features(self, market: MarketConfig, f: Features) -> None:
        self.metrics.features.labels(market.id, f.timeframe).inc()
        self.writer.put("features", [f])
        self.hubs["market"].publish(market.id, encode("features", market.id, features_json(f)))

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        self.metrics.regimes.labels(market.id).inc()
        self.state_writer.put("regimes", [u])
        self.hubs["regime"].publish(market.id, encode("regime", market.id, regime_json(u)))

    def transition(self, market: MarketConfig, t: Transition) -> None:
        self.state_writer.put("transitions", [t])
        self.hubs["regime"].publish(market.id, encode("transition", market.id,
                                                      transition_json(t)))
        log.info("regime transition", market=market.id, regime=t.to_regime,
                 strategy=t.to_strategy, cause=t.cause)

    def model(self, market: MarketConfig, mv: ModelVersion) -> None:
        self.state_writer.put("models", [mv])
        log.info("regime model trained", market=market.id, timeframe=mv.timeframe,
                 version=mv.version, status=mv.status, reason=mv.reason, n_obs=mv.n_obs,
                 effective_from=mv.effective_from)

    def decision(self, market: MarketConfig, d: Decision) -> None:
        m = self.metrics
        m.decisions.labels(market.id, d.action).inc()
        closed_ms = d.bar_time + timeframe_ms(d.timeframe)
        m.latency.labels(market.id, "bar_close_to_decision").observe(
            max(0.0, time.time_ns() / 1e9 - closed_ms / 1000))
        self.state_writer.put("decisions", [d.model_dump()])
        self.latest_decisions[market.id] = d
        self.hubs["decision"].publish(market.id, encode("decision", market.id,
                                                        d.model_dump(mode="json")))
        if d.action != "HOLD":
            log.info("decision", market=market.id, action=d.action, rule=d.rule,
                     position=d.position_after, regime=d.regime, confidence=d.confidence)

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        if book.bids or book.asks:  # an empty book while resyncing is state, not data
            self.writer.put(f"books:{market.venue}", [book])

    def _publish_open(self, bar: Bar) -> None:
        self.hubs["market"].publish(bar.market, encode("bar", bar.market, bar_json(bar)))

    def store_status(self) -> dict[str, object]:
        out: dict[str, object] = {
            "sql": self.settings.sql_url.split("://", 1)[0],
            "market_store": "mongodb" if self.settings.mongo_url else "sql",
        }
        for name in ("writer", "state_writer"):
            w = getattr(self, name, None)
            if w is not None:
                out[w.name] = {"backlog": w.backlog, "errors": w.errors, "spilled": w.spilled}
        out["purged_rows"] = self.purged
        out["event_loop_lag_ms"] = self.loop_lag.summary()
        return out

    # training in a worker process -------------------------------------------------------------

    def _train(self, pipeline: MarketPipeline, req: TrainRequest) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init)
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fit, req)
        self._background.add(fut)

        def done(f: asyncio.Future[FitResult]) -> None:
            self._background.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("regime training failed", market=req.market, timeframe=req.timeframe,
                          error=str(exc) or type(exc).__name__)
                pipeline.install(FitResult(req, False, f"training failed: {exc}"))
                return
            pipeline.install(f.result())

        fut.add_done_callback(done)

    # start / stop ----------------------------------------------------------------------------

    async def start(self) -> None:
        from aetherion.decision.store import load_policy_state, write_decisions
        from aetherion.storage.market import open_market_store
        from aetherion.storage.state import StateStore, record_sources, source_changes
        from aetherion.storage.writer import BufferedWriter, state_kinds

        s = self.settings
        self.state = await StateStore.open(s.sql_url)
        # A market id's stored data belongs to its source: never mixed with another's.
        sources = {m.id: market_source(m) for m in s.markets}
        if changed := await source_changes(self.state, sources):
            raise RuntimeError("; ".join(changed))
        await record_sources(self.state, sources)
        self.store = await open_market_store(s, self.state.engine)
        # A spill journal belongs to the stores it was meant for: one folder per pair of targets,
        # so a run against other stores never writes this one's rows there.
        mongo = re.sub(r"//[^@/]*@", "//", s.mongo_url or "")  # no credentials in the hash
        target = f"{make_url(s.sql_url).render_as_string()}|{mongo}|{s.mongo_db}".encode()
        spool = Path("var/spool") / hashlib.sha256(target).hexdigest()[:12]
        self.writer = BufferedWriter.for_market(self.store, s, spool)
        engine = self.state.engine

        async def decisions(rows: list[dict[str, Any]]) -> None:
            await write_decisions(engine, [Decision.model_validate(r) for r in rows])

        self.state_writer = BufferedWriter(
            "state", {**state_kinds(self.state), "decisions": (dict, decisions)}, s, spool,
            ping=self.state.ping)
        self.writer.start()
        self.state_writer.start()
        # What an earlier run journaled reaches the stores before start-up reads them
        # (positions, models, bars, prices); a store that is down is not waited for.
        for w in (self.writer, self.state_writer):
            if not await w.journal_written(JOURNAL_WAIT_S):
                log.warning("starting before the journal is written back", store=w.name,
                            backlog=w.backlog)
        self.started_ms = time.time_ns() // 1_000_000
        for m in s.markets:
            live = LiveMarket(m, s, make_connector(m, s, self.state), self, self._train)
            live.latency = self.metrics.latency
            self.markets[m.id] = live
            await self._restore_models(live)
            await self._resume_connector(live)
            policy = live.pipeline.policy
            restored = await load_policy_state(self.state.engine, m.id, policy.timeframe)
            if restored is not None:
                live.pipeline.restore_policy(restored)
                log.info("position restored", market=m.id, position=restored.position,
                         last_bar_time=restored.last_bar_time)
            await self._warm(live)
            live.tasks = [
                asyncio.create_task(self._guard(m, live.connector.run(live.queue), "connector")),
                asyncio.create_task(self._guard(m, live.process(self.book), "pipeline")),
                asyncio.create_task(self._guard(m, live.clock(self._publish_open), "clock")),
            ]
            log.info("market started", market=m.id, venue=m.venue, connector=m.connector)
        # Measured from here: before, the server is not serving yet (start-up warm-up).
        self._tasks.append(asyncio.create_task(self._watch_loop_lag()))
        self._tasks.append(asyncio.create_task(self._purge_loop()))
        # What start-up loaded (modules, warm-up history, models) lives as long as the process;
        # left to the collector, every full collection walks all of it (about 50 ms on a 2-core
        # machine, a stall for every client and bar close). Frozen, it is never walked.
        gc.collect()
        gc.freeze()

    async def _restore_models(self, live: LiveMarket) -> None:
        """Reuse the newest active model per timeframe; number new fits on from the highest
        stored version (rejected ones included), so a version is never stored twice."""
        regime, mid = live.pipeline.regime, live.market.id
        for tf, highest in (await self.state.highest_versions(mid)).items():
            if tf in regime.tracks:
                regime.skip_versions(tf, highest)
        for tf, mv in (await self.state.latest_models(mid)).items():
            if tf not in regime.tracks:
                continue
            if regime.restore(tf, mv.params, mv.version):
                log.info("regime model reused", market=mid, timeframe=tf, version=mv.version)
            else:
                log.info("stored regime model of other inputs not reused; training anew",
                         market=mid, timeframe=tf, version=mv.version)

    async def _resume_connector(self, live: LiveMarket) -> None:
        """A connector that makes its prices up (the simulator) goes on from the newest stored
        trade of its market, else the close of its newest stored bar."""
        resume = getattr(live.connector, "resume", None)
        if resume is None:
            return
        mid = live.market.id
        try:
            if ticks := await self.store.ticks(mid, 1):
                resume(ticks[0].price, ticks[0].ts)
            elif bars := await self.store.bars(mid, live.pipeline.candles.timeframes[0], 1):
                resume(bars[0].close, bars[0].close_time)
        except Exception as e:  # a store that is down: start from the configured price
            log.warning("stored price unavailable", market=mid, error=str(e) or type(e).__name__)

    async def _warm(self, live: LiveMarket) -> None:
        """Warm each timeframe up with recent history: the venue's (complete, authoritative)
        when it offers any, else the bars this store recorded in earlier runs."""
        n = self.settings.history_bars
        history: dict[str, Sequence[Bar]] = {}
        now = time.time_ns() // 1_000_000
        for tf in live.pipeline.candles.timeframes if n else ():
            end = now - now % timeframe_ms(tf)
            try:
                history[tf] = await live.connector.history(tf, n, end)
            except Exception as e:  # a venue without history still runs, just colder
                log.warning("history unavailable", market=live.market.id, timeframe=tf,
                            error=str(e) or type(e).__name__)
            if not history.get(tf):
                stored = await self.store.bars(live.market.id, tf, n, until=end - 1)
                history[tf] = [b for b in reversed(stored) if b.close_time <= end]
        live.pipeline.warm(history)
        log.info("warmed up from history", market=live.market.id,
                 bars={tf: len(b) for tf, b in history.items()})
        await self._record_run(live, now, history)

    async def _record_run(self, live: LiveMarket, now: int,
                          history: dict[str, Sequence[Bar]]) -> None:
        """What a replay of this run from the store needs to start where it started: the start
        time, the history bars it warmed up with, and the settings its stages ran with."""
        key = f"runs:{live.market.id}"
        record = await self.state.get_state(key) or {"runs": []}
        s = self.settings.model_dump(mode="json")
        record["runs"] = [*record["runs"][-99:], {
            "started_ms": now,
            "timeframes": list(live.pipeline.candles.timeframes),
            "history": {tf: [b[0].open_time, b[-1].open_time, len(b)]
                        for tf, b in history.items() if b},
            "settings": {k: v for k, v in s.items()
                         if k.startswith(("regime_", "decision_")) or k == "bar_grace_ms"},
        }]
        await self.state.set_state(key, record)

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
        from aetherion.storage.retention import MARKET_TABLES, STATE_TABLES, plan

        s = self.settings
        while True:
            now = time.time_ns() // 1_000_000
            try:
                gone = {**await self.store.purge(plan(s, now, MARKET_TABLES)),
                        **await self.state.purge(plan(s, now, STATE_TABLES))}
                self.purged += sum(gone.values())
                if any(gone.values()):
                    log.info("retention purge", **{k: v for k, v in gone.items() if v})
            except Exception as e:  # noqa: BLE001 - a store that is down: try again later
                log.warning("retention purge failed", error=str(e)[:200])
            await asyncio.sleep(s.retention_interval_s)

    async def _guard(self, market: MarketConfig, coro: Any, stage: str) -> None:
        """Run one market task; a crash is logged with the market, never silent."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("market task failed", market=market.id, stage=stage)
            if stage == "connector":  # said in /api/market/status, not only in the log
                self.markets[market.id].connector.stats.on_error(e, state="failed")

    async def stop(self) -> None:
        # Bounded (``stop_deadline_ms``): a store that does not answer by then gets nothing
        # more; the writers journal what it did not take, for the next start.
        began = time.monotonic()
        deadline = began + self.settings.stop_deadline_ms / 1000
        tasks = [t for live in self.markets.values() for t in live.tasks]
        # Connectors first, then drain what they queued, then the rest.
        for live in self.markets.values():
            live.tasks[0].cancel()
        for live in self.markets.values():
            with contextlib.suppress(asyncio.CancelledError):
                await live.tasks[0]
            live.connector.stats.state = "stopped"
            # Take what was queued, for a while: the checkpoint is what was processed, so what
            # is left when the time is up comes back by backfill on the next start.
            until = min(time.monotonic() + STOP_DRAIN_S, deadline)
            while not live.queue.empty() and time.monotonic() < until:
                item = live.queue.get_nowait()
                if isinstance(item, list) and item:
                    live.pipeline.on_ticks(item)
                    live.connector.processed(item[-1])
            live.pipeline.on_clock(time.time_ns() // 1_000_000)
            with contextlib.suppress(TimeoutError):  # not saved: the next start backfills more
                await asyncio.wait_for(live.connector.save_checkpoint(),
                                       max(0.1, deadline - time.monotonic()))
        for t in [*tasks, *self._tasks]:
            t.cancel()
        await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)
        for f in list(self._background):
            f.cancel()
        writers = [w for w in (getattr(self, "writer", None), getattr(self, "state_writer", None))
                   if w is not None]
        grace = max(0.0, deadline - time.monotonic())
        closing = [w.close(grace) for w in writers]
        if self._pool is not None:  # a fit still running: waited for off the event loop
            closing.append(asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True))
        await asyncio.gather(*closing)
        for name in ("store", "state"):
            part = getattr(self, name, None)
            if part is not None:
                await part.close()
        log.info("stopped", seconds=round(time.monotonic() - began, 2),
                 journaled={w.name: w.backlog for w in writers if w.backlog})
