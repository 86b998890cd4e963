"""How a market picks up where the last run left it, before its first live trade: the models
it had, the position it held, the price the simulator was at, and recent bars to warm up on."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from aetherion.config import Settings
from aetherion.domain import Bar, timeframe_ms
from aetherion.ingest.base import Resumable
from aetherion.ingest.live import LiveConnector
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


async def _trade_checkpoint(live: LiveMarket, state: StateStore, store: MarketStore,
                            now: int) -> tuple[int, int] | None:
    """(last trade id, its time) of a connector that resumes by consecutive trade ids from its
    checkpoint (Binance, ccxt) and backfills what came after, when that checkpoint is recent
    (within one interval of the coarsest timeframe); else ``None``.

    The checkpoint is saved apart from the trades (the state store, at most every second;
    the trades through the market writer, every 250 ms), so after a kill -9 either may be
    ahead. Stored trades past the checkpoint are fetched again (stored once, by their key);
    a checkpoint past the newest stored trade is moved back to it (and saved so), so the
    trades the dead process took but never wrote are fetched again, not lost."""
    conn = live.connector
    if not isinstance(conn, LiveConnector) or conn.checkpointer.store is None:
        return None
    key = conn.checkpointer.key
    try:
        saved = await state.get_state(key) or {}
        tid, ts = saved.get("last_trade_id"), saved.get("last_ts")
        if not (isinstance(tid, int) and isinstance(ts, int)):
            return None
        horizon = timeframe_ms(live.pipeline.candles.timeframes[-1])
        if now - ts > horizon:
            return None  # long gone: warm up to now as on a first start
        newest = await store.ticks(live.market.id, 1)
        nid = newest[0].trade_id if newest else None
        # Moved back only to a recent stored trade (not, say, one left by a purge).
        if nid and nid.isdigit() and int(nid) < tid and newest[0].ts >= ts - horizon:
            log.warning("checkpoint past the newest stored trade: moved back to it",
                        market=live.market.id, checkpoint=tid, stored=int(nid))
            tid, ts = int(nid), newest[0].ts
            await state.set_state(key, {**saved, "last_trade_id": tid, "last_ts": ts,
                                        "saved_ms": now})
    except Exception as e:  # a store that is down: warm up as on a first start
        log.warning("checkpoint unavailable for the warm-up", market=live.market.id,
                    error=str(e) or type(e).__name__)
        return None
    return tid, ts


async def _resume_to_checkpoint(live: LiveMarket, store: MarketStore, finest: Sequence[Bar],
                                checkpoint: tuple[int, int]) -> int:
    """The stored trades after the last warm-up bar up to the checkpointed one: the bars the
    last owner left open are rebuilt as it had them, and the connector's backfill (from the
    checkpoint on) completes them. Returns how many trades were fed."""
    tid, ts = checkpoint
    coarsest = timeframe_ms(live.pipeline.candles.timeframes[-1])
    since = finest[-1].close_time if finest else ts - ts % coarsest
    ticks = await store.ticks(live.market.id, RESUME_TICKS, since=since)
    ticks.reverse()  # oldest first, in stored order
    mine = [t for t in ticks if t.trade_id and t.trade_id.isdigit() and int(t.trade_id) <= tid]
    live.pipeline.resume_ticks(mine)
    return len(mine)


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
    # A connector resuming from a trade checkpoint (a restart, a cluster takeover) backfills
    # the trades since: its history ends at that trade's bar, the rest is rebuilt from trades.
    checkpoint = None if made_up else await _trade_checkpoint(live, state, store, now)
    upto = now if checkpoint is None else min(now, checkpoint[1])
    for tf in tfs if n else ():
        end = upto - upto % timeframe_ms(tf)
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
    resumed = 0
    if made_up:
        resumed = await _resume_open_bars(live, store, history.get(tfs[0], ()), now)
    elif checkpoint is not None:
        resumed = await _resume_to_checkpoint(live, store, history.get(tfs[0], ()), checkpoint)
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
