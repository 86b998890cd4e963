"""``aetherion replay --from-store``: replay what a live run stored, and get what it decided.

A live run records (``system_state``, key ``runs:<market>``) when it started, which history bars
it warmed up with and the settings its stages ran with. This replays that run: the same warm-up
bars (from the market store), then the stored ticks in their stored order, through the same
``MarketPipeline``; instead of training, each training request installs the model version the
live run trained for it, from the bar where it took effect live. The regimes and decisions are
then those of the live run, row for row.
"""

from __future__ import annotations

from typing import Any

from aetherion.config import Settings
from aetherion.decision.config import DecisionConfig
from aetherion.domain import Bar, ModelVersion
from aetherion.pipeline.replay import ReplayResult, replay_run
from aetherion.recorded import InputError
from aetherion.regime.config import RegimeConfig
from aetherion.storage.market import open_market_store
from aetherion.storage.state import StateStore

__all__ = ["replay_from_store"]

TICK_PAGE = 10_000_000


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
    s = _run_settings(settings, run)
    return replay_run(s, market_id, history, ticks, versions, restored, run["started_ms"])


def _run_settings(settings: Settings, run: dict[str, Any]) -> Settings:
    """``settings`` with the stages' settings the run recorded (nested, or the flat names
    earlier versions recorded; fields this version does not have are left out)."""
    rec = dict(run["settings"])
    data = settings.model_dump()
    data["timeframes"] = tuple(run["timeframes"])
    for section, cfg in (("regime", RegimeConfig), ("decision", DecisionConfig)):
        given = {**rec.pop(section, {}), **{k[len(section) + 1:]: rec.pop(k) for k in list(rec)
                                            if k.startswith(section + "_")}}
        data[section] = {**data[section],
                         **{k: v for k, v in given.items() if k in cfg.model_fields}}
    data.update({k: v for k, v in rec.items() if k in Settings.model_fields})
    return Settings.model_validate(data)
