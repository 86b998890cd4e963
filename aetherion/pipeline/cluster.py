"""Cluster mode: this instance's part in a cluster on NATS JetStream (``docs/scale-out.md``).

:class:`ClusterNode` runs a round every second: renew the leases of the markets it owns (a market
whose lease is no longer :meth:`~aetherion.cluster.Lease.still_mine` stops at once, without
writing anything more), heartbeat, and apply the assignment plan: release what hashes to another
live instance (after a clean stop), take what is free and hashes here (start the market from the
stores: models, position, checkpoint, warm-up). Owned markets publish their events on the bus
(:class:`BusSink`); every instance subscribes to every market's events and hands them to its own
WebSocket clients and to a :class:`Mirror` of the markets it does not own, so any instance serves
any market.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from aetherion.cluster import (
    Bus,
    BusEvent,
    BusSubscription,
    ClusterSettings,
    Lease,
    LeaseManager,
    Membership,
    connect,
    default_instance_id,
    plan,
)
from aetherion.cluster.keys import (
    bar_msg_id,
    book_msg_id,
    decision_msg_id,
    features_msg_id,
    regime_msg_id,
    ticks_msg_id,
    transition_msg_id,
)
from aetherion.config import MarketConfig, Settings
from aetherion.decision.model import Decision
from aetherion.domain import Bar, BookSnapshot, Features, RegimeUpdate, Tick, Transition
from aetherion.payloads import (
    bar_json,
    bar_of,
    book_json,
    book_of,
    encode,
    features_json,
    regime_json,
    regime_of,
    tick_json,
    tick_of,
    transition_json,
)
from aetherion.pipeline.live import MarketView
from aetherion.pipeline.sinks import NullSink

if TYPE_CHECKING:
    from nats.aio.client import Client

    from aetherion.pipeline.runtime import Runtime

__all__ = ["BusSink", "ClusterNode", "Mirror"]

log = structlog.get_logger(__name__)

BOOK_LEVELS = 20
TICKS_PER_MESSAGE = 500
PUBLISH_QUEUE = 100_000  # events waiting for the bus; past it the oldest are dropped (counted)
PUBLISH_BATCH = 256  # publishes in flight at once
FOLLOW_S = 0.2  # how often the subscriptions are matched to what the clients follow


class BusSink(NullSink):
    """The events of the markets this instance owns, onto the bus, once each (message ids from
    natural keys). ``mine(market)`` fences: a market whose lease is not ours publishes nothing."""

    def __init__(self, bus: Bus, mine: Callable[[str], bool]) -> None:
        self.bus, self.mine = bus, mine
        self.queue: asyncio.Queue[tuple[str, str, bytes, str]] = asyncio.Queue(PUBLISH_QUEUE)
        self.published = self.duplicates = self.dropped = self.fenced = self.failed = 0

    def _put(self, market: str, kind: str, payload: dict[str, Any], msg_id: str) -> None:
        if not self.mine(market):
            self.fenced += 1
            return
        item = (market, kind, encode(kind, market, payload).encode(), msg_id)
        if self.queue.full():  # the bus is down or slow: the stores keep the data
            self.queue.get_nowait()
            self.queue.task_done()
            self.dropped += 1
        self.queue.put_nowait(item)

    def ticks(self, market: MarketConfig, ticks: Sequence[Tick]) -> None:
        for i in range(0, len(ticks), TICKS_PER_MESSAGE):
            chunk = ticks[i:i + TICKS_PER_MESSAGE]
            self._put(market.id, "ticks", {"ticks": [tick_json(t) for t in chunk]},
                      ticks_msg_id(chunk))

    def bar(self, market: MarketConfig, bar: Bar) -> None:
        self._put(market.id, "bar", bar_json(bar), bar_msg_id(bar))

    def features(self, market: MarketConfig, f: Features) -> None:
        self._put(market.id, "features", features_json(f), features_msg_id(f))

    def book(self, market: MarketConfig, book: BookSnapshot) -> None:
        self._put(market.id, "book", book_json(book, BOOK_LEVELS), book_msg_id(book))

    def regime(self, market: MarketConfig, u: RegimeUpdate) -> None:
        self._put(market.id, "regime", regime_json(u), regime_msg_id(u))

    def transition(self, market: MarketConfig, t: Transition) -> None:
        self._put(market.id, "transition", transition_json(t), transition_msg_id(t))

    def decision(self, market: MarketConfig, d: Decision) -> None:
        self._put(market.id, "decision", d.model_dump(mode="json"), decision_msg_id(d))

    def status(self, view: MarketView, owner: str) -> None:
        """The owner's connector status and the market's latest values, for the other
        instances' status pages and snapshots (those that do not follow every event)."""
        now = time.time_ns() // 1_000_000
        mid = view.market.id
        snap = {
            "tick": {"market": mid, **tick_json(view.last_tick)} if view.last_tick else None,
            "book": book_json(view.book, BOOK_LEVELS) if view.book else None,
            "bars": [bar_json(b) for b in view.bars.values() if b is not None],
            "fused": regime_json(view.fused) if view.fused else None,
        }
        self._put(mid, "status", {"status": view.status, "owner": owner, "snapshot": snap},
                  f"status:{mid}:{owner}:{now}")

    async def run(self) -> None:
        """Publish what is queued, up to ``PUBLISH_BATCH`` at once, in order."""
        while True:
            batch = [await self.queue.get()]
            while len(batch) < PUBLISH_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            acks = await asyncio.gather(*(self.bus.publish(*item) for item in batch),
                                        return_exceptions=True)
            for _ in batch:
                self.queue.task_done()
            for ack in acks:
                if isinstance(ack, BaseException):
                    self.failed += 1
                elif ack.duplicate:
                    self.duplicates += 1
                else:
                    self.published += 1
            if self.failed and any(isinstance(a, BaseException) for a in acks):
                log.warning("bus publish failed", failed=self.failed,
                            error=next(str(a) for a in acks if isinstance(a, BaseException)))


class Mirror:
    """The latest values of a market owned by another instance, from its events on the bus."""

    def __init__(self, market: MarketConfig, timeframes: Sequence[str]) -> None:
        self.market = market
        self.last_tick: Tick | None = None
        self.book: BookSnapshot | None = None
        self.bars: dict[str, Bar | None] = dict.fromkeys(timeframes)
        self.fused: RegimeUpdate | None = None
        self.status: dict[str, Any] = {  # until the owner's first status: nobody runs it yet
            "state": "unowned", "msg_rate": 0.0, "last_message_age_s": None, "reconnects": 0,
            "gaps_detected": 0, "gaps_filled": 0, "latency_ms": {}}
        self.owner: str | None = None
        self.status_at = 0.0  # monotonic time of the owner's last status

    def on_event(self, kind: str, msg: dict[str, Any]) -> None:
        if kind == "ticks" and msg["ticks"]:
            self.last_tick = tick_of({"market": self.market.id, **msg["ticks"][-1]})
        elif kind == "tick":
            self.last_tick = tick_of(msg)
        elif kind == "bar":
            bar = bar_of(msg)
            current = self.bars.get(bar.timeframe)
            if current is None or bar.open_time >= current.open_time:
                self.bars[bar.timeframe] = bar
        elif kind == "book":
            self.book = book_of(msg)
        elif kind == "regime" and msg["timeframe"] == "fused":
            self.fused = regime_of(msg)
        elif kind == "status":
            self._status(msg)

    def _status(self, msg: dict[str, Any]) -> None:
        """The owner's status, and the latest values it carries (as the events would set)."""
        self.status, self.owner = msg["status"], msg["owner"]
        self.status_at = time.monotonic()
        snap = msg.get("snapshot") or {}
        if snap.get("tick"):
            self.last_tick = tick_of(snap["tick"])
        if snap.get("book"):
            self.book = book_of(snap["book"])
        for b in snap.get("bars", ()):
            self.on_event("bar", b)
        if snap.get("fused"):
            self.fused = regime_of(snap["fused"])

    def view(self, stale_s: float) -> MarketView:
        """As the owner last said; an owner silent for ``stale_s`` (dead, cut off) shows its
        market as ``stale`` until another instance takes it."""
        status = self.status
        if self.status_at and time.monotonic() - self.status_at > stale_s:
            status = {**status, "state": "stale"}
        return MarketView(self.market, status, self.last_tick, self.book, dict(self.bars),
                          self.fused)


class ClusterNode:
    """This instance in the cluster; :meth:`open` joins, :meth:`close` leaves cleanly."""

    def __init__(self, runtime: Runtime, cfg: ClusterSettings) -> None:
        self.runtime, self.cfg = runtime, cfg
        self.id = cfg.instance_id
        self.leases: dict[str, Lease] = {}
        self.owners: dict[str, tuple[str, float]] = {}  # market → (owner, lease age s)
        self.members: list[dict[str, Any]] = []
        self.mirrors = {m.id: Mirror(m, runtime.settings.timeframes)
                        for m in runtime.settings.markets}
        self.rounds = 0
        self._nc: Client | None = None
        self._status_sub: BusSubscription | None = None  # every market's status: mirrors
        self._subs: dict[str, BusSubscription] = {}  # every event of the markets followed
        self._tasks: list[asyncio.Task[None]] = []
        self.leases_mgr: LeaseManager
        self.membership: Membership
        self.bus: Bus
        self.bus_sink: BusSink

    @classmethod
    def settings_of(cls, s: Settings) -> ClusterSettings:
        assert s.nats_url is not None  # noqa: S101 - only built in cluster mode
        return ClusterSettings(s.nats_url, s.instance_id or default_instance_id(),
                               lease_ttl_s=s.lease_ttl_s,
                               heartbeat_s=min(1.0, s.lease_ttl_s / 4),
                               replicas=s.cluster_replicas,
                               api_url=f"http://{s.host}:{s.port}")

    def mine(self, market: str) -> bool:
        lease = self.leases.get(market)
        return lease is not None and lease.still_mine()

    def holder(self, market: str) -> tuple[str, int] | None:
        """(this instance, its lease token) while the market's lease is ours: what the state
        store's fence must hold for a write of the market to be stored."""
        lease = self.leases.get(market)
        return (self.id, lease.token) if lease is not None and lease.still_mine() else None

    async def open(self) -> None:
        cfg = self.cfg
        self._nc = nc = await connect(cfg.nats_url, f"aetherion:{self.id}")
        js = nc.jetstream()
        name = self.runtime.settings.cluster_name
        self.leases_mgr = await LeaseManager.open(js, self.id, cfg.lease_ttl_s,
                                                  bucket=f"{name}_leases", replicas=cfg.replicas)
        self.membership = await Membership.open(js, self.id, cfg.lease_ttl_s,
                                                api_url=cfg.api_url, bucket=f"{name}_instances",
                                                replicas=cfg.replicas)
        self.bus = await Bus.open(nc, stream=name.upper(), prefix=name, replicas=cfg.replicas)
        self.bus_sink = BusSink(self.bus, self.mine)

    async def start(self) -> None:
        """Follow every market's events, publish ours, and start the rounds."""
        self._status_sub = await self.bus.subscribe(None, ["status"], self._on_event)
        self._tasks = [asyncio.create_task(self.bus_sink.run(), name="cluster:publish"),
                       asyncio.create_task(self._renewals(), name="cluster:renew"),
                       asyncio.create_task(self._following(), name="cluster:follow"),
                       asyncio.create_task(self._rounds(), name="cluster:rounds")]
        log.info("joined the cluster", instance=self.id,
                 nats=self.cfg.nats_url.split("@")[-1])

    async def _following(self) -> None:
        """Subscribe to every event of the markets this instance's clients follow (and only
        those): a client that arrives gets them within ``FOLLOW_S``. The other markets' latest
        values come with their owners' status, once a round."""
        while True:
            try:
                await self.follow()
            except Exception as e:  # NATS unreachable for a while: tried again
                log.warning("cluster subscriptions not updated", error=str(e) or type(e).__name__)
            await asyncio.sleep(FOLLOW_S)

    async def follow(self) -> None:
        wanted = self.runtime.publisher.wanted()
        markets = set(self.mirrors) if wanted is None else set(self.mirrors) & wanted
        for mid in sorted(markets - set(self._subs)):
            self._subs[mid] = await self.bus.subscribe([mid], None, self._on_event)
        for mid in sorted(set(self._subs) - markets):
            await self._subs.pop(mid).unsubscribe()

    def _on_event(self, ev: BusEvent) -> None:
        mirror = self.mirrors.get(ev.market)
        if mirror is None:
            return
        text = ev.text
        msg = orjson.loads(text)
        if ev.kind == "status":
            mirror.on_event(ev.kind, msg)
            return
        self.runtime.publisher.relay(ev.kind, ev.market, text)
        if ev.market not in self.runtime.markets:
            mirror.on_event(ev.kind, msg)

    async def _rounds(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as e:  # NATS unreachable for a while: leases lapse on their own
                log.warning("cluster round failed", error=str(e) or type(e).__name__)
            await asyncio.sleep(self.cfg.heartbeat_s)

    async def _renewals(self) -> None:
        """Renew every lease each ``heartbeat_s``, apart from the rounds: a round that starts
        markets (restore, warm-up) takes seconds, a lease's deadline does not wait."""
        while True:
            try:
                await self.renew()
            except Exception as e:
                log.warning("lease renewal failed", error=str(e) or type(e).__name__)
            await asyncio.sleep(self.cfg.heartbeat_s)

    async def renew(self) -> None:
        for mid, held in list(self.leases.items()):
            if not (held.still_mine() and await self.leases_mgr.renew(held)
                    and held.still_mine()):
                await self._lost(mid)

    async def _lost(self, mid: str) -> None:
        """Another instance may own the market already: stop acting on it, write nothing."""
        log.warning("market lease lost: stopping at once", market=mid)
        self.leases.pop(mid, None)
        await self.runtime.stop_market(mid, drain=False)

    async def round(self) -> None:
        rt, mgr = self.runtime, self.leases_mgr
        await self.membership.heartbeat(sorted(self.leases))
        members = await self.membership.members()
        now = time.time_ns() // 1_000_000
        self.members = [{"id": m.id, "started_ms": m.started_ms, "heartbeat_ms": m.heartbeat_ms,
                         "heartbeat_age_s": round((now - m.heartbeat_ms) / 1000, 3),
                         "markets": list(m.markets), "api_url": m.api_url} for m in members]
        owners = await mgr.owners()
        self.owners = {mid: (o.owner, o.age_s(now)) for mid, o in owners.items()}
        markets = {m.id: m for m in rt.settings.markets}
        todo = plan(markets, [m.id for m in members], self.id,
                    {mid: o.owner for mid, o in owners.items()})
        for mid in todo.release:
            await self._release(mid)
        for mid in todo.acquire:
            lease = await mgr.try_acquire(mid)
            if lease is None:
                continue
            self.leases[mid] = lease
            try:
                if rt.stores is not None:  # from now on a former owner's writes are refused
                    await rt.stores.state.fence(mid, self.id, lease.token)
                await rt.start_market(markets[mid])
            except Exception:
                log.exception("market failed to start; lease released", market=mid)
                self.leases.pop(mid, None)
                await mgr.release(lease)
                continue
            if not self.mine(mid):  # lost while it started
                await self._lost(mid)
                continue
            self.owners[mid] = (self.id, 0.0)
            log.info("market taken", market=mid, token=lease.token)
        for live in rt.markets.values():
            self.bus_sink.status(live.view(), self.id)
        self.rounds += 1

    async def _release(self, mid: str) -> None:
        """Hand a market over cleanly: stop it (drain, checkpoint), let its rows reach the
        stores, then give the lease up."""
        await self.runtime.stop_market(mid)
        stores = self.runtime.stores
        if stores is not None:
            for w in stores.writers:
                await w.flushed(min(2.0, self.runtime.time_left()))
        lease = self.leases.pop(mid, None)
        if lease is not None:
            await self.leases_mgr.release(lease)
        log.info("market handed over", market=mid)

    async def close(self) -> None:
        """Leave: no new round; each market stopped cleanly and handed over (its lease still
        renewed meanwhile), what they published flushed, then off the bus."""
        if not self._tasks:
            return
        publish, renewals, following, rounds = self._tasks
        for t in (rounds, following):
            t.cancel()
        await asyncio.gather(rounds, following, return_exceptions=True)
        for mid in list(self.leases):
            try:
                await self._release(mid)
            except Exception as e:  # the lease expires on its own
                log.warning("hand-over failed", market=mid, error=str(e) or type(e).__name__)
        renewals.cancel()
        await asyncio.gather(renewals, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.membership.leave()
        with contextlib.suppress(TimeoutError):  # what the markets published on the way out
            async with asyncio.timeout(2.0):
                await self.bus_sink.queue.join()
        publish.cancel()
        await asyncio.gather(publish, return_exceptions=True)
        for sub in [*self._subs.values(), self._status_sub]:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    def status(self) -> dict[str, Any]:
        return {"mode": "cluster", "instance": self.id, "rounds": self.rounds,
                "members": self.members, "following": sorted(self._subs),
                "owners": {m: {"owner": o, "lease_age_s": round(a, 3)}
                           for m, (o, a) in sorted(self.owners.items())},
                "bus": {"published": self.bus_sink.published,
                        "duplicates": self.bus_sink.duplicates,
                        "dropped": self.bus_sink.dropped, "fenced": self.bus_sink.fenced,
                        "failed": self.bus_sink.failed},
                "store_fenced": 0 if self.runtime.stores is None
                else self.runtime.stores.state.fenced}
