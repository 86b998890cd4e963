"""``aetherion replay --from-store``: replay what a live run stored, and get what it decided.

A live run records (``system_state``, key ``runs:<market>``) when it started, which history bars
it warmed up with and the settings its stages ran with. This replays that run: the same warm-up
bars (from the market store), then the stored ticks in their stored order, through the same
``MarketPipeline``; instead of training, each training request installs the model version the
live run trained for it, from the bar where it took effect live. The regimes and decisions are
then those of the live run, row for row.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Any

from aetherion.config import Settings
from aetherion.domain import Bar, ModelVersion, Tick
from aetherion.pipeline import ListSink, MarketPipeline
from aetherion.regime.model import FitResult, TrainRequest
from aetherion.replay import InputError, ReplayResult, _rows
from aetherion.storage.market import open_market_store
from aetherion.storage.state import StateStore

__all__ = ["replay_from_store"]

TICK_PAGE = 10_000_000


class StoredTrainer:
    """Hands out, per timeframe and in order, the model versions the live run trained."""

    def __init__(self, versions: Sequence[ModelVersion]) -> None:
        self.queue: dict[str, deque[ModelVersion]] = defaultdict(deque)
        for v in sorted(versions, key=lambda v: v.version):
            self.queue[v.timeframe].append(v)
        self.missing = 0
        self.waiting: list[tuple[ModelVersion, TrainRequest]] = []

    def __call__(self, pipeline: MarketPipeline, req: TrainRequest) -> None:
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


async def replay_from_store(settings: Settings, market_id: str, since: int | None = None,
                            until: int | None = None) -> ReplayResult:
    """Replay the live run of ``market_id`` that started at or after ``since`` (else the last
    one), up to ``until`` or the next run's start."""
    market = settings.market(market_id)
    if market is None:
        known = ", ".join(m.id for m in settings.markets)
        raise InputError(f"unknown market {market_id!r}; known: {known}")
    state = await StateStore.open(settings.sql_url)
    store = await open_market_store(settings, state.engine)
    try:
        runs = (await state.get_state(f"runs:{market_id}") or {}).get("runs", [])
        if not runs:
            raise InputError(f"no recorded live run of {market_id} in the store")
        pick = [i for i, r in enumerate(runs) if since is None or r["started_ms"] >= since]
        if not pick:
            raise InputError(f"no live run of {market_id} started at or after {since}")
        i = pick[0] if since is not None else pick[-1]
        run = runs[i]
        end = runs[i + 1]["started_ms"] if i + 1 < len(runs) else None
        if until is not None:
            end = until + 1 if end is None else min(end, until + 1)
        history: dict[str, list[Bar]] = {}
        for tf, (first, last, n) in run["history"].items():
            bars = await store.bars(market_id, tf, n, since=first, until=last)
            history[tf] = bars[::-1]
        ticks = await store.ticks(market_id, TICK_PAGE, since=run["started_ms"],
                                  until=None if end is None else end - 1)
        ticks.reverse()  # oldest first, stored order within a millisecond
        every = await state.models(market_id, limit=100_000)
        versions = [v for v in every
                    if v.trained_at >= run["started_ms"] and (end is None or v.trained_at < end)]
        restored: dict[str, ModelVersion] = {}  # what the run reused at its start
        for v in sorted(every, key=lambda v: v.version):
            if v.status == "active" and v.trained_at < run["started_ms"]:
                restored[v.timeframe] = v
    finally:
        await store.close()
        await state.close()
    s = settings.model_copy(update={"timeframes": tuple(run["timeframes"]), **run["settings"]})
    return _run(s, market_id, history, ticks, versions, restored, run["started_ms"])


def _run(settings: Settings, market_id: str, history: dict[str, list[Bar]], ticks: list[Tick],
         versions: list[ModelVersion], restored: dict[str, ModelVersion],
         started_ms: int) -> ReplayResult:
    market = settings.market(market_id)
    assert market is not None  # noqa: S101 - checked by the caller
    sink = ListSink()
    trainer = StoredTrainer(versions)
    pipe = MarketPipeline(market, settings, sink, trainer)
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
    rows = _rows(sink, base)
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
    return ReplayResult(rows, summary, sink)
