"""Prometheus metrics (``/metrics``), one registry per running process.

Counters and histograms are updated where the events happen; connector states, reconnects, gaps,
store backlogs and WebSocket client counts are read from their owners at scrape time. A labelled
counter whose label values are known from the start (markets, timeframes, actions) is listed at 0
from the start, so a rate on a fresh start is 0 rather than "no data".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aetherion.decision.model import ACTIONS

__all__ = ["Metrics"]

STATES = ("connecting", "live", "reconnecting", "resyncing", "failed", "closed", "stopped")
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)


class _Scraped(Collector):
    """What is read from its owners when Prometheus scrapes."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        r = self.read()
        state = GaugeMetricFamily("aetherion_connector_state", "1 for the connector's state",
                                  labels=["market", "state"])
        reconnects = CounterMetricFamily("aetherion_connector_reconnects",
                                         "connections made after the first", labels=["market"])
        gaps = CounterMetricFamily("aetherion_gaps", "trade gaps by kind (detected, filled)",
                                   labels=["market", "kind"])
        for market, stats in r["connectors"].items():
            for s in STATES:
                state.add_metric([market, s], 1.0 if stats["state"] == s else 0.0)
            reconnects.add_metric([market], stats.get("reconnects", 0))
            gaps.add_metric([market, "detected"], stats.get("gaps_detected", 0))
            gaps.add_metric([market, "filled"], stats.get("gaps_filled", 0))
        backlog = GaugeMetricFamily("aetherion_store_backlog", "rows waiting to be written",
                                    labels=["store"])
        errors = CounterMetricFamily("aetherion_store_errors", "failed store writes",
                                     labels=["store"])
        for store, w in r["stores"].items():
            backlog.add_metric([store], w["backlog"])
            errors.add_metric([store], w["errors"])
        clients = GaugeMetricFamily("aetherion_websocket_clients", "connected clients",
                                    labels=["stream"])
        messages = CounterMetricFamily("aetherion_websocket_messages", "messages queued",
                                       labels=["stream"])
        dropped = CounterMetricFamily("aetherion_websocket_dropped_clients",
                                      "clients dropped for being slow", labels=["stream"])
        for stream, h in r["hubs"].items():
            clients.add_metric([stream], h["clients"])
            messages.add_metric([stream], h["messages"])
            dropped.add_metric([stream], h["dropped"])
        refused = CounterMetricFamily("aetherion_websocket_refused",
                                      "connections refused (origin, limit)", labels=["reason"])
        for reason, n in r.get("ws_refused", {}).items():
            refused.add_metric([reason], n)
        yield from (state, reconnects, gaps, backlog, errors, clients, messages, dropped, refused)


class Metrics:
    def __init__(self, read: Callable[[], dict[str, Any]], markets: Iterable[str] = (),
                 timeframes: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ticks = Counter("aetherion_ticks", "trades processed", ["market"], registry=r)
        self.bars = Counter("aetherion_bars_closed", "bars closed", ["market", "timeframe"],
                            registry=r)
        self.features = Counter("aetherion_features", "feature rows", ["market", "timeframe"],
                                registry=r)
        self.regimes = Counter("aetherion_regime_updates", "regime updates", ["market"],
                               registry=r)
        self.decisions = Counter("aetherion_decisions", "decisions", ["market", "action"],
                                 registry=r)
        self.latency = Histogram(
            "aetherion_latency_seconds", "latency by stage (exchange_to_receive, "
            "receive_to_processed, bar_close_to_decision)", ["market", "stage"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.loop_lag = Histogram("aetherion_event_loop_lag_seconds", "event-loop lag",
                                  buckets=LATENCY_BUCKETS, registry=r)
        r.register(_Scraped(read))
        tfs = tuple(timeframes)
        for m in markets:  # the known label values, at 0 until their first event
            self.ticks.labels(m)
            self.regimes.labels(m)
            for tf in tfs:
                self.bars.labels(m, tf)
                self.features.labels(m, tf)
            for action in ACTIONS:
                self.decisions.labels(m, action)

    def render(self) -> bytes:
        return generate_latest(self.registry)
