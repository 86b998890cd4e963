"""How a market picks up where the last run left it, before its first live trade: the models
it had, the position it held, the price the simulator was at, and recent bars to warm up on."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from aetherion.config import Settings
from aetherion.domain import Bar, timeframe_ms
from aetherion.ingest.base import Resumable
from aetherion.pipeline.live import LiveMarket
from aetherion.storage.decisions import load_policy_state
from aetherion.storage.market import MarketStore
from aetherion.storage.state import StateStore

__all__ = ["restore", "warm"]

log = structlog.get_logger(__name__)

RUNS_KEPT = 100  # run records per market (``replay --from-store`` picks one)
RESUME_TICKS = 2_000_000  # stored trades fed back at most to rebuild the bars left open


async def restore(live: LiveMarket, state: StateStore, store: MarketStore) -> None:
    """Models, position and price as the stores have them."""
    await restore_models(live, state)
    await _resume_price(live, store)
    mid, policy = live.market.id, live.pipeline.policy
    restored = await load_policy_state(state.engine, mid, policy.timeframe)
    if restored is not None:
        live.pipeline.restore_policy(restored)
        log.info("position restored", market=mid, position=restored.position,
                 last_bar_time=restored.last_bar_time)


async def restore_models(live: LiveMarket, state: StateStore) -> None:
    """Reuse the newest active model per timeframe; number new fits on from the highest
    stored version (rejected ones included), so a version is never stored twice."""
    regime, mid = live.pipeline.regime, live.market.id
    for tf, highest in (await state.highest_versions(mid)).items():
        if tf in regime.tracks:
            regime.skip_versions(tf, highest)
    for tf, mv in (await state.latest_models(mid)).items():
        if tf not in regime.tracks:
            continue
        if regime.restore(tf, mv.params, mv.version):
            log.info("regime model reused", market=mid, timeframe=tf, version=mv.version)
        else:
            log.info("stored regime model of other inputs not reused; training anew",
                     market=mid, timeframe=tf, version=mv.version)


async def _resume_price(live: LiveMarket, store: MarketStore) -> None:
    """A connector that makes its prices up (the simulator) goes on from the newest stored
    trade of its market, else the close of its newest stored bar."""
    if not isinstance(live.connector, Resumable):
        return
    mid = live.market.id
    try:
        if ticks := await store.ticks(mid, 1):
            live.connector.resume(ticks[0].price, ticks[0].ts)
        elif bars := await store.bars(mid, live.pipeline.candles.timeframes[0], 1):
            live.connector.resume(bars[0].close, bars[0].close_time)
    except Exception as e:  # a store that is down: start from the configured price
        log.warning("stored price unavailable", market=mid, error=str(e) or type(e).__name__)


async def _resume_open_bars(live: LiveMarket, store: MarketStore, finest: Sequence[Bar],
                            now: int) -> int:
    """The stored trades after the last warm-up bar of the finest timeframe (at most one
    interval of the coarsest timeframe back): the bars the last run left open are rebuilt from
    what it recorded, not made up. Returns how many trades were fed."""
    coarsest = timeframe_ms(live.pipeline.candles.timeframes[-1])
    since = finest[-1].close_time if finest else now - now % coarsest
    ticks = await store.ticks(live.market.id, RESUME_TICKS, since=since)
    ticks.reverse()  # oldest first, in stored order
    live.pipeline.resume_ticks(ticks)
    return len(ticks)


async def warm(live: LiveMarket, settings: Settings, state: StateStore,
               store: MarketStore) -> None:
    """Warm each timeframe up with recent history: the venue's (complete, authoritative)
    when it offers any, else the bars this store recorded in earlier runs; then record the run
    (what ``replay --from-store`` needs to start where it started)."""
    n = settings.history_bars
    history: dict[str, Sequence[Bar]] = {}
    now = time.time_ns() // 1_000_000
    tfs = live.pipeline.candles.timeframes
    # A connector that makes its prices up has no history of its own beyond what it stored:
    # its made-up bars would stand in for the real ones of the last run.
    made_up = isinstance(live.connector, Resumable)
    for tf in tfs if n else ():
        end = now - now % timeframe_ms(tf)
        if not made_up:
            try:
                history[tf] = await live.connector.history(tf, n, end)
            except Exception as e:  # a venue without history still runs, just colder
                log.warning("history unavailable", market=live.market.id, timeframe=tf,
                            error=str(e) or type(e).__name__)
        if not history.get(tf):
            stored = await store.bars(live.market.id, tf, n, until=end - 1)
            history[tf] = [b for b in reversed(stored) if b.close_time <= end]
        if made_up and not history.get(tf):  # a first start: nothing stored yet
            history[tf] = await live.connector.history(tf, n, end)
    live.pipeline.warm(history)
    resumed = await _resume_open_bars(live, store, history.get(tfs[0], ()), now) \
        if made_up else 0
    log.info("warmed up from history", market=live.market.id,
             bars={tf: len(b) for tf, b in history.items()}, resumed_ticks=resumed)
    key = f"runs:{live.market.id}"
    record = await state.get_state(key) or {"runs": []}
    record["runs"] = [*record["runs"][-(RUNS_KEPT - 1):], {
        "started_ms": now,
        "timeframes": list(live.pipeline.candles.timeframes),
        "history": {tf: [b[0].open_time, b[-1].open_time, len(b)]
                    for tf, b in history.items() if b},
        "settings": settings.model_dump(mode="json", include={"regime", "decision",
                                                              "bar_grace_ms"}),
    }]
    await state.set_state(key, record)
