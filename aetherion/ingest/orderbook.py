"""A local L2 order book kept in sync by Binance's snapshot + diff rules.

Diff events carry ``U`` (first update id) and ``u`` (last update id). The rules (Binance spot
"how to manage a local order book correctly"):

1. Buffer diffs from the stream; fetch a REST snapshot (``lastUpdateId``).
2. If the snapshot is older than the first buffered diff (``lastUpdateId + 1 < U``), fetch again.
3. Drop buffered diffs with ``u <= lastUpdateId``; apply the rest in order.
4. From then on a diff with ``u`` at or below the book's update id is ignored; one with
   ``U > update id + 1`` is a gap: the book is dropped and rebuilt from a fresh snapshot.

While it is not in sync the book's state is ``"resyncing"`` and :meth:`OrderBook.top` shows no
levels, so a wrong book is never served.

:class:`TrailingBook` is the trailing edge of a connector's book throttle (any venue's): a book
held back inside the throttle's interval goes out when the interval ends, if nothing newer did.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Literal

import structlog

from aetherion.domain import BookSnapshot
from aetherion.ingest.base import Outbox

__all__ = ["BookState", "OrderBook", "TrailingBook"]

log = structlog.get_logger(__name__)

BookState = Literal["live", "resyncing"]
Levels = Iterable[tuple[float, float]]


class OrderBook:
    """One market's L2 book. Sizes of 0 remove a level."""

    def __init__(self, market: str, max_buffer: int = 10_000) -> None:
        self.market = market
        self.state: BookState = "resyncing"
        self.update_id: int | None = None  # id of the last applied update
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.gaps = 0  # sequence gaps seen (each one forces a resync)
        self._buffer: deque[tuple[int, int, Levels, Levels]] = deque()
        self._max_buffer = max_buffer

    def reset(self) -> None:
        """Drop the book and start buffering diffs until the next snapshot."""
        self.state = "resyncing"
        self.update_id = None
        self.bids.clear()
        self.asks.clear()
        self._buffer.clear()

    def on_diff(self, first_id: int, last_id: int, bids: Levels, asks: Levels) -> bool:
        """Apply (or buffer) one diff. False on a sequence gap: the book has been reset and the
        caller must fetch a fresh snapshot."""
        uid = self.update_id
        if self.state == "resyncing" or uid is None:
            if len(self._buffer) >= self._max_buffer:
                self._buffer.popleft()  # the snapshot will be found too old and fetched again
            self._buffer.append((first_id, last_id, bids, asks))
            return True
        if last_id <= uid:
            return True  # already in the snapshot
        if first_id > uid + 1:
            self.gaps += 1
            self.reset()
            self._buffer.append((first_id, last_id, bids, asks))
            return False
        self._apply(last_id, bids, asks)
        return True

    def on_snapshot(self, last_update_id: int, bids: Levels, asks: Levels) -> bool:
        """Install a REST snapshot and replay the buffered diffs. False when the snapshot is
        older than the buffered stream (or the buffer has a gap): fetch another one."""
        buffered = [d for d in self._buffer if d[1] > last_update_id]
        if buffered and buffered[0][0] > last_update_id + 1:
            self._buffer = deque(buffered)
            return False
        self.bids = {p: q for p, q in bids if q > 0}
        self.asks = {p: q for p, q in asks if q > 0}
        self.update_id = last_update_id
        self.state = "live"
        self._buffer.clear()
        for first_id, last_id, b, a in buffered:
            if first_id > self.update_id + 1:
                self.gaps += 1
                self.reset()
                return False
            self._apply(last_id, b, a)
        return True

    def _apply(self, last_id: int, bids: Levels, asks: Levels) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size in levels:
                if size > 0:
                    side[price] = size
                else:
                    side.pop(price, None)
        self.update_id = last_id

    def top(self, depth: int, ts: int) -> BookSnapshot:
        """The best ``depth`` levels a side; no levels while resyncing."""
        if self.state != "live":
            return BookSnapshot(self.market, ts, (), (), self.update_id, "resyncing")
        bids = tuple(heapq.nlargest(depth, self.bids.items()))
        asks = tuple(heapq.nsmallest(depth, self.asks.items()))
        return BookSnapshot(self.market, ts, bids, asks, self.update_id, "live")


class TrailingBook:
    """The trailing edge of a book throttle: one task, owned by the connector (``start`` when
    its ``run`` begins, ``stop`` when it ends).

    The throttle calls :meth:`hold` when it keeps a book back, with the time left in its
    interval (a later call moves the deadline). When the deadline has passed, ``take()`` gives
    the newest book, or ``None`` when it shows what was last sent, and that book goes out
    (counted in ``sent``).
    """

    def __init__(self, name: str, take: Callable[[], BookSnapshot | None]) -> None:
        self.name = name
        self._take = take
        self.sent = 0
        self._due = 0.0
        self._held = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, out: Outbox) -> None:
        self._held = asyncio.Event()  # of this run's loop
        self._task = asyncio.create_task(self._run(out), name=self.name)
        self._task.add_done_callback(self._done)

    def hold(self, left_s: float) -> None:
        self._due = time.monotonic() + max(left_s, 0.0)
        self._held.set()

    async def stop(self, timeout_s: float = 1.0) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        _, pending = await asyncio.wait({task}, timeout=timeout_s)
        if pending:
            log.warning("trailing book task did not stop in time", task=self.name)

    async def _run(self, out: Outbox) -> None:
        while True:
            await self._held.wait()
            left = self._due - time.monotonic()
            if left > 0:  # a later hold may have moved the deadline: look again after it
                await asyncio.sleep(left)
                continue
            self._held.clear()
            book = self._take()
            if book is not None:
                self.sent += 1
                await out.put(book)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("trailing book task failed", task=self.name, error=repr(task.exception()))
