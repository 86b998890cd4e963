"""Batched, retried market-store writes, off the hot path.

The pipeline hands rows over without waiting (``put_*``). A background task writes them in
batches; when the store fails it keeps the batch and retries with capped back-off, so a store
outage never stops the pipeline and loses nothing; idempotent keys make a retried batch harmless.
Memory is bounded: beyond ``store_buffer_rows`` waiting rows, the oldest are appended to a spill
journal under ``var/spool/`` and written back once the store has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import structlog

from aetherion.config import Settings
from aetherion.domain import (
    Bar,
    BookSnapshot,
    Features,
    ModelVersion,
    RegimeUpdate,
    Tick,
    Transition,
)
from aetherion.storage.market import MarketStore
from aetherion.storage.state import StateStore

__all__ = ["BufferedWriter", "market_kinds", "state_kinds"]

log = structlog.get_logger(__name__)

Write = Callable[[list[Any]], Coroutine[Any, Any, Any]]


def market_kinds(store: MarketStore) -> dict[str, tuple[type[Any], Write]]:
    """What the market store takes, by kind: the row type (for the journal) and the write."""

    def books(venue: str) -> Write:
        return lambda rows: store.write_books(venue, rows)

    async def history(rows: list[Any]) -> None:
        await store.write_bars(rows, keep_existing=True)

    return {
        "ticks": (Tick, store.write_ticks), "bars": (Bar, store.write_bars),
        "history_bars": (Bar, history), "features": (Features, store.write_features),
        **{f"books:{v}": (BookSnapshot, books(v)) for v in ("crypto", "us", "nse")},
    }


def state_kinds(state: StateStore) -> dict[str, tuple[type[Any], Write]]:
    """What the state store takes through a writer (decisions are added by their stage)."""
    return {
        "models": (ModelVersion, state.write_models),
        "regimes": (RegimeUpdate, state.write_regimes),
        "transitions": (Transition, state.write_transitions),
    }


class BufferedWriter:
    """``kinds``: kind → (row type, async write of a batch). Kinds are written in this order."""

    def __init__(self, name: str, kinds: dict[str, tuple[type[Any], Write]], settings: Settings,
                 spool_dir: Path | str = "var/spool") -> None:
        self.name = name
        self.kinds = kinds
        self.batch = settings.store_batch_size
        self.flush_s = settings.store_flush_ms / 1000
        self.bound = settings.store_buffer_rows
        self.spool = Path(spool_dir) / name
        self._queues: dict[str, deque[Any]] = {k: deque() for k in kinds}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down = False
        self.errors = 0
        self.written = 0
        self.spilled = 0

    @classmethod
    def for_market(cls, store: MarketStore, settings: Settings,
                   spool_dir: Path | str = "var/spool") -> BufferedWriter:
        return cls("market", market_kinds(store), settings, spool_dir)

    # ---- the pipeline's side: never waits --------------------------------------------------

    def put(self, kind: str, rows: list[Any]) -> None:
        q = self._queues[kind]
        q.extend(rows)
        if len(q) >= self.batch:
            self._wake.set()
        if self.backlog > self.bound:
            self._spill()

    @property
    def backlog(self) -> int:
        """Rows waiting in memory (spilled rows are counted in ``spilled`` until written)."""
        return sum(len(q) for q in self._queues.values())

    # ---- the background task ----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, grace_s: float = 15.0) -> None:
        """Write everything that is waiting, then stop. If the store is still down after
        ``grace_s`` seconds, what waits goes to the spill journal for the next start."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self.backlog:
                self._spill(share=1.0)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            try:
                await self._flush()
                await self._unspool()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is down or refusing: keep the rows, retry
                self.errors += 1
                delay = min(max(delay * 2, 0.2), 10.0) * (0.8 + 0.4 * random.random())  # noqa: S311
                if not self._down:
                    self._down = True
                    log.warning("market store write failed; buffering and retrying",
                                store=self.name, error=str(e) or type(e).__name__)
                continue
            if self._down:
                self._down = False
                log.info("market store writes recovered", store=self.name)
            delay = 0.0
            if self._closing and not self.backlog and not self._spool_files():
                return

    async def _flush(self) -> None:
        for kind, q in self._queues.items():
            while q:
                n = min(len(q), self.batch)
                rows = [q[i] for i in range(n)]
                await self._write(kind)(rows)
                for _ in range(n):  # only after the store took them
                    q.popleft()
                self.written += n

    def _write(self, kind: str) -> Write:
        return self.kinds[kind][1]

    # ---- spill journal ----------------------------------------------------------------------

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool.glob("*.jsonl")) if self.spool.exists() else []

    def _spill(self, share: float = 0.5) -> None:
        """Move the oldest ``share`` of the waiting rows of every kind to a journal file."""
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / f"{os.getpid()}-{self.spilled:012d}.jsonl"
        enc = msgspec.json.Encoder()
        moved = 0
        with path.open("ab") as f:
            for kind, q in self._queues.items():
                n = int(len(q) * share)
                if not n:
                    continue
                rows = [q.popleft() for _ in range(n)]
                f.write(enc.encode((kind, rows)) + b"\n")
                moved += n
            f.flush()
            os.fsync(f.fileno())
        self.spilled += moved
        log.warning("market store backlog spilled to disk", store=self.name,
                    rows=moved, file=str(path))

    async def _unspool(self) -> None:
        """Write journal files back, oldest first, once memory is empty."""
        for path in self._spool_files():
            if self.backlog:
                return
            for line in path.read_bytes().splitlines():
                kind = msgspec.json.decode(line)[0]
                row_type: Any = list.__class_getitem__(self.kinds[kind][0])
                _, rows = msgspec.json.decode(line, type=tuple[str, row_type])
                await self._write(kind)(rows)
                self.written += len(rows)
            path.unlink()
