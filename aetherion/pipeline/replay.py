"""What a replay gives back, and the replay of a stored live run.

A replay is the live pipeline fed from a file or from the store into a
:class:`~aetherion.pipeline.sinks.ListSink`; :func:`result_rows` turns what it kept into one row
per bar of the replayed timeframe (the CSV/Parquet output). :func:`store_result` writes a
replay's events through the same buffered writers as a live run, decisions included.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aetherion.config import MarketConfig, Settings
from aetherion.domain import Bar, ModelVersion, Tick
from aetherion.pipeline.sinks import ListSink, Sink, StoreSink
from aetherion.pipeline.stages import MarketPipeline, build_pipeline
from aetherion.regime.model import FitResult, TrainRequest
from aetherion.storage.stores import open_stores

__all__ = ["TRUE_REGIME", "ReplayResult", "StoredTrainer", "replay_run", "result_rows",
           "store_result"]

TRUE_REGIME = "true_regime"


@dataclass
class ReplayResult:
    market: MarketConfig
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    sink: ListSink = field(repr=False)


def result_rows(sink: ListSink, timeframe: str,
          truth: dict[int, str] | None = None) -> list[dict[str, Any]]:
    feats = {f.open_time: f for f in sink.features_ if f.timeframe == timeframe}
    own = {u.open_time: u for u in sink.regimes if u.timeframe == timeframe}
    fused = {u.open_time: u for u in sink.regimes if u.timeframe == "fused"}
    decided = {d.bar_time: d for d in sink.decisions}
    rows = []
    position, exposure = "flat", 0.0
    for b in sink.bars:
        if b.timeframe != timeframe or b.revision:
            continue
        f, u, d = feats.get(b.open_time), fused.get(b.open_time), decided.get(b.open_time)
        raw = own.get(b.open_time)
        if d is not None:
            position, exposure = d.position_after, d.exposure
        row: dict[str, Any] = {
            "ts": datetime.fromtimestamp(b.open_time / 1000, tz=UTC).isoformat().replace(
                "+00:00", "Z"),
            "open": b.open, "high": b.high, "low": b.low, "close": b.close,
            "volume": b.volume,
            "atr": f.atr if f else None, "volatility": f.volatility if f else None,
            "volume_delta": f.volume_delta if f else None,
            "regime_raw": raw.regime_raw if raw else "unknown",
            "confidence_raw": raw.confidence_raw if raw else 0.0,
            "regime": u.regime if u else "unknown",
            "confidence": u.confidence if u else 0.0,
            "strategy": u.strategy if u else None,
            "action": d.action if d else "HOLD", "position": position, "exposure": exposure,
            "open_time": b.open_time, "trade_count": b.trade_count,
            "model_version": u.model_version if u else None,
            "rule": d.rule if d else None, "suppressed": d.suppressed if d else None,
            "reason": d.reason if d else None,
        }
        if truth is not None and b.open_time in truth:
            row[TRUE_REGIME] = truth[b.open_time]
        rows.append(row)
    return rows


class StoredTrainer:
    """Hands out, per timeframe and in order, the model versions the live run trained."""

    def __init__(self, versions: Sequence[ModelVersion]) -> None:
        self.queue: dict[str, deque[ModelVersion]] = defaultdict(deque)
        for v in sorted(versions, key=lambda v: v.version):
            self.queue[v.timeframe].append(v)
        self.missing = 0
        self.waiting: list[tuple[ModelVersion, TrainRequest]] = []

    def request(self, pipeline: MarketPipeline, req: TrainRequest) -> None:
        q = self.queue[req.timeframe]
        if not q:  # the live run stopped before this fit came back: it stays requested
            self.missing += 1
            return
        self.waiting.append((q.popleft(), req))
        self.on_event(pipeline)

    def on_event(self, pipeline: MarketPipeline) -> None:
        """Install each fit when event time reaches the time it arrived live (its
        ``effective_from``), exactly where the live run installed it: after the bars closed by
        then, before any later one."""
        due = [(mv, req) for mv, req in self.waiting if mv.effective_from <= pipeline.event_ms]
        for mv, req in due:
            self.waiting.remove((mv, req))
            result = FitResult(req, mv.status == "active", mv.reason, mv.params, mv.loglik)
            pipeline.install(result, mv.effective_from)


def replay_run(settings: Settings, market_id: str, history: dict[str, list[Bar]], ticks: list[Tick],
         versions: list[ModelVersion], restored: dict[str, ModelVersion],
         started_ms: int) -> ReplayResult:
    """A stored live run again: the warm-up bars it had, its ticks in stored order, and each
    model version installed where it took effect live."""
    market = settings.market(market_id)
    if market is None:
        raise ValueError(f"unknown market {market_id!r}")
    sink = ListSink()
    trainer = StoredTrainer(versions)
    pipe = build_pipeline(market, settings, sink, trainer)
    t0 = time.perf_counter()
    for tf, mv in restored.items():  # as live: only the timeframes this run had (the
        if tf in pipe.regime.tracks:  # store keeps models of runs with other TIMEFRAMES)
            pipe.regime.restore(tf, mv.params, mv.version)
    pipe.warm(history)
    for i in range(0, len(ticks), 1000):
        pipe.on_ticks(ticks[i:i + 1000])
    if ticks:  # close what the clock had surely closed live by the last trade
        pipe.on_clock(ticks[-1].ts)
    elapsed = time.perf_counter() - t0
    base = settings.timeframes[0]
    rows = result_rows(sink, base)
    summary: dict[str, Any] = {
        "input_kind": "store", "market": market_id, "run_started_ms": started_ms,
        "timeframe": base, "timeframes": list(settings.timeframes), "bars": len(rows),
        "trades": len(ticks), "elapsed_s": round(elapsed, 3),
        "regimes": sum(u.timeframe == "fused" for u in sink.regimes),
        "decisions": len(sink.decisions),
        "models_replayed": len(versions) - sum(len(q) for q in trainer.queue.values())
        - len(trainer.waiting),
        "models_missing": trainer.missing,
    }
    return ReplayResult(market, rows, summary, sink)


def forward(kept: ListSink, market: MarketConfig, to: Sink) -> None:
    """Hand what a replay kept to another sink, in the order a live run would have."""
    for b in kept.history_bars:
        to.history_bar(market, b)
    for b in kept.bars:
        to.bar(market, b)
    for f in kept.features_:
        to.features(market, f)
    for mv in kept.models:
        to.model(market, mv)
    for u in kept.regimes:
        to.regime(market, u)
    for t in kept.transitions:
        to.transition(market, t)
    for d in kept.decisions:
        to.decision(market, d)


async def store_result(result: ReplayResult, settings: Settings) -> None:
    """``replay --store``: the replay's bars, features, regimes, transitions, models and
    decisions into the stores through the live run's buffered writers (idempotent keys: a second
    store of the same replay adds nothing)."""
    stores = await open_stores(settings)
    try:
        sink = StoreSink(stores.market_writer, stores.state_writer)
        forward(result.sink, result.market, sink)
        await asyncio.sleep(0)
    finally:
        await stores.close(settings.stop_deadline_ms / 1000)
