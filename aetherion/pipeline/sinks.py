"""Where a pipeline's events go: the :class:`Sink` port and the sinks of this package.

A pipeline hands every event to one sink. Live, that is a :class:`Fanout` of the stores'
:class:`StoreSink`, the :class:`MetricsSink` and the publisher the API side injects (its hubs);
a replay keeps everything in a :class:`ListSink`, and ``replay --store`` adds a
:class:`StoreSink`. A sink never raises into the pipeline for an event it does not care about:
every method of the protocol is implemented, most as a pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from aetherion.config import MarketConfig
from aetherion.decision.model import Decision
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
from aetherion.metrics import Metrics
from aetherion.storage.writer import BufferedWriter

__all__ = ["Fanout", "ListSink", "MetricsSink", "NullSink", "Sink", "StoreSink"]

log = structlog.get_logger(__name__)


class Sink(Protocol):
    """The events of a market's pipeline. ``bar`` also carries open bars (``closed`` False)
    when the live clock shows them; ``history_bar`` is a warm-up bar from the venue."""

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None: ...

    def bar(self, market: MarketConfig, bar: Bar) -> None: ...

    def history_bar(self, market: MarketConfig, bar: Bar) -> None: ...

    def features(self, market: MarketConfig, f: Features) -> None: ...

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None: ...

    def transition(self, market: MarketConfig, t: Transition) -> None: ...

    def model(self, market: MarketConfig, mv: ModelVersion) -> None: ...

    def decision(self, market: MarketConfig, d: Decision) -> None: ...

    def book(self, market: MarketConfig, book: BookSnapshot) -> None: ...


class NullSink:
    """Takes every event and keeps none: the base of sinks that want only a few."""

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        pass

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        pass

    def history_bar(self, market: MarketConfig, bar: Bar) -> None:
        pass

    def features(self, market: MarketConfig, f: Features) -> None:
        pass

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        pass

    def transition(self, market: MarketConfig, t: Transition) -> None:
        pass

    def model(self, market: MarketConfig, mv: ModelVersion) -> None:
        pass

    def decision(self, market: MarketConfig, d: Decision) -> None:
        pass

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        pass


class ListSink(NullSink):
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


class StoreSink(NullSink):
    """Into the buffered writers: market data to the market store, the rest to the state store.
    Open bars are not stored (a bar is stored when it closes, and again per revision)."""

    def __init__(self, market_writer: BufferedWriter, state_writer: BufferedWriter) -> None:
        self.market_writer, self.state_writer = market_writer, state_writer

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        self.market_writer.put("ticks", list(ticks))

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        if bar.closed:
            self.market_writer.put("bars", [bar])

    def history_bar(self, market: MarketConfig, bar: Bar) -> None:
        self.market_writer.put("history_bars", [bar])

    def features(self, market: MarketConfig, f: Features) -> None:
        self.market_writer.put("features", [f])

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        self.state_writer.put("regimes", [u])

    def transition(self, market: MarketConfig, t: Transition) -> None:
        self.state_writer.put("transitions", [t])

    def model(self, market: MarketConfig, mv: ModelVersion) -> None:
        self.state_writer.put("models", [mv])

    def decision(self, market: MarketConfig, d: Decision) -> None:
        self.state_writer.put("decisions", [d.model_dump()])

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        if book.bids or book.asks:  # an empty book while resyncing is state, not data
            self.market_writer.put(f"books:{market.venue}", [book])


class MetricsSink(NullSink):
    """Counts events for Prometheus and logs the ones an operator reads."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        self.m.ticks.labels(market.id).inc(len(ticks))

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        if bar.closed and not bar.revision:
            self.m.bars.labels(market.id, bar.timeframe).inc()

    def features(self, market: MarketConfig, f: Features) -> None:
        self.m.features.labels(market.id, f.timeframe).inc()

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        self.m.regimes.labels(market.id).inc()

    def transition(self, market: MarketConfig, t: Transition) -> None:
        log.info("regime transition", market=market.id, regime=t.to_regime,
                 strategy=t.to_strategy, cause=t.cause)

    def model(self, market: MarketConfig, mv: ModelVersion) -> None:
        log.info("regime model trained", market=market.id, timeframe=mv.timeframe,
                 version=mv.version, status=mv.status, reason=mv.reason, n_obs=mv.n_obs,
                 effective_from=mv.effective_from)

    def decision(self, market: MarketConfig, d: Decision) -> None:
        self.m.decisions.labels(market.id, d.action).inc()
        closed_ms = d.bar_time + timeframe_ms(d.timeframe)
        self.m.latency.labels(market.id, "bar_close_to_decision").observe(
            max(0.0, time.time_ns() / 1e9 - closed_ms / 1000))
        if d.action != "HOLD":
            log.info("decision", market=market.id, action=d.action, rule=d.rule,
                     position=d.position_after, regime=d.regime, confidence=d.confidence)


class Fanout:
    """Every event to each sink in turn (stores first: what is shown has been queued to store).
    ``gate(market_id)``, when given, must allow a market's events to pass (cluster fencing: a
    market whose lease is not this instance's any more writes and shows nothing)."""

    def __init__(self, *sinks: Sink, gate: Callable[[str], bool] | None = None) -> None:
        self.sinks = sinks
        self.gate = gate or (lambda market_id: True)

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.ticks(market, ticks)

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.bar(market, bar)

    def history_bar(self, market: MarketConfig, bar: Bar) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.history_bar(market, bar)

    def features(self, market: MarketConfig, f: Features) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.features(market, f)

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.regime(market, u)

    def transition(self, market: MarketConfig, t: Transition) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.transition(market, t)

    def model(self, market: MarketConfig, mv: ModelVersion) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.model(market, mv)

    def decision(self, market: MarketConfig, d: Decision) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.decision(market, d)

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        if self.gate(market.id):
            for s in self.sinks:
                s.book(market, book)
