"""Batched, retried market-store writes, off the hot path.

The pipeline hands rows over without waiting (``put_*``). A background task writes them in
batches; when the store fails it keeps the batch and retries with capped back-off, so a store
outage never stops the pipeline and loses nothing; idempotent keys make a retried batch harmless.
Rows go to a spill journal under ``var/spool/<name>/`` (fsynced JSON lines, written back once the
store answers again) in two cases: beyond ``store_buffer_rows`` waiting rows, the oldest half; and
while the store fails (a write failed, or one has waited ``store_spill_after_ms``), every row
within that time, so a crash during an outage loses at most that last moment. Meanwhile the
retries are made from the journal. The healthy path never touches the disk.

A batch the store refuses while it answers a ping is bad data, not an outage: it is written row
by row and the rows the store still refuses go to ``rejected.jsonl`` beside the journal, counted in
``rejected`` and logged, so one bad row never blocks the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import structlog

from aetherion.config import Settings
from aetherion.decision.model import Decision
from aetherion.domain import (
    Bar,
    BookSnapshot,
    Features,
    ModelVersion,
    RegimeUpdate,
    Tick,
    Transition,
)
from aetherion.storage.decisions import write_decisions
from aetherion.storage.market import MarketStore
from aetherion.storage.state import StateStore

__all__ = ["BufferedWriter", "market_kinds", "state_kinds"]

log = structlog.get_logger(__name__)

#: the write of a batch of the kind's row type (a type that differs by kind)
Write = Callable[[list[Any]], Awaitable[None]]
#: kind -> (row type, write)
Kinds = dict[str, tuple[type[object], Write]]
Ping = Callable[[], Awaitable[None]]
PING_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 10.0
REJECTED = "rejected.jsonl"


def market_kinds(store: MarketStore) -> Kinds:
    """What the market store takes, by kind: the row type (for the journal) and the write."""

    def books(venue: str) -> Write:
        return lambda rows: store.write_books(venue, rows)

    async def history(rows: list[Bar]) -> None:
        await store.write_bars(rows, keep_existing=True)

    return {
        "ticks": (Tick, store.write_ticks), "bars": (Bar, store.write_bars),
        "history_bars": (Bar, history), "features": (Features, store.write_features),
        **{f"books:{v}": (BookSnapshot, books(v)) for v in ("crypto", "us", "nse")},
    }


def state_kinds(state: StateStore) -> Kinds:
    """What the state store takes through a writer. Decisions travel as dicts (their
    pydantic model's dump), so the journal keeps them as plain JSON."""
    async def decisions(rows: list[dict[str, object]]) -> None:
        await write_decisions(state.engine, [Decision.model_validate(r) for r in rows],
                              None if state.holder is None else state.owned)

    return {
        "models": (ModelVersion, state.write_models),
        "regimes": (RegimeUpdate, state.write_regimes),
        "transitions": (Transition, state.write_transitions),
        "decisions": (dict, decisions),
    }


class BufferedWriter:
    """``kinds``: kind → (row type, async write of a batch). Kinds are written in this order.

    ``ping`` (optional) tells an outage from rows the store refuses; without it every failure
    is treated as an outage and retried.
    """

    def __init__(self, name: str, kinds: Kinds, settings: Settings,
                 spool_dir: Path | str = "var/spool", ping: Ping | None = None) -> None:
        self.name = name
        self.kinds = kinds
        self.ping = ping
        self.batch = settings.store_batch_size
        self.flush_s = settings.store_flush_ms / 1000
        self.bound = settings.store_buffer_rows
        self.spill_s = settings.store_spill_after_ms / 1000
        self.spool = Path(spool_dir) / name
        self._queues: dict[str, deque[object]] = {k: deque() for k in kinds}
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()  # a stop cuts the back-off short
        self._unspooled = asyncio.Event()  # the journal is empty
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._files: list[Path] = []  # journal files not yet written back, oldest first
        self._write_since: float | None = None  # when the write now waiting began (monotonic)
        self._inflight_journaled = False  # the batch being written is also in the journal
        self._closing = False
        self._down = False
        self._spill_logged = False
        self._spill_failed = False  # the last spill could not be written (logged once)
        self._journal_rows = 0  # rows in journal files not yet written back
        self._inflight: tuple[str, int] | None = None  # (kind, rows) being written now
        self.errors = 0
        self.written = 0
        self.spilled = 0
        self.rejected = 0

    @classmethod
    def for_market(cls, store: MarketStore, settings: Settings,
                   spool_dir: Path | str = "var/spool") -> BufferedWriter:
        return cls("market", market_kinds(store), settings, spool_dir, store.ping)

    @classmethod
    def for_state(cls, state: StateStore, settings: Settings,
                  spool_dir: Path | str = "var/spool") -> BufferedWriter:
        return cls("state", state_kinds(state), settings, spool_dir, state.ping)

    # ---- the pipeline's side: never waits --------------------------------------------------

    def put(self, kind: str, rows: Sequence[object]) -> None:
        q = self._queues[kind]
        q.extend(rows)
        if len(q) >= self.batch:
            self._wake.set()
        if self.in_memory > self.bound:
            self._try_spill()

    def put_ticks(self, ticks: list[Tick]) -> None:
        self.put("ticks", ticks)

    def put_bars(self, bars: list[Bar]) -> None:
        self.put("bars", bars)

    def put_features(self, rows: list[Features]) -> None:
        self.put("features", rows)

    def put_books(self, venue: str, books: list[BookSnapshot]) -> None:
        self.put(f"books:{venue}", books)

    @property
    def in_memory(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def backlog(self) -> int:
        """Rows waiting to be written: in memory and in the spill journal."""
        return self.in_memory + self._journal_rows

    @property
    def failing(self) -> bool:
        """A write failed and none succeeded since, or the current one waits too long."""
        since = self._write_since
        return self._down or (since is not None and time.monotonic() - since >= self.spill_s)

    # ---- the background task ----------------------------------------------------------------

    def start(self) -> None:
        self._files = self._spool_files()
        self._journal_rows = sum(len(r) for p in self._files
                                 for _, r in self._read(p, report=False))
        self._task = asyncio.create_task(self._run(), name=f"writer:{self.name}")
        self._ticker = asyncio.create_task(self._journal_while_failing(),
                                           name=f"writer:{self.name}:journal")

    async def journal_written(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the journal is written back to the store; False
        when it is not (the store fails, or there is more than the time allows)."""
        end = time.monotonic() + timeout_s
        while self._files and not self.failing and (left := end - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.1)):
                    await self._unspooled.wait()
        return not self._files

    async def flushed(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until nothing waits in memory or is being written;
        False when rows are still waiting (the store is slow or down)."""
        end = time.monotonic() + timeout_s
        self._wake.set()
        while self.in_memory or self._inflight is not None:
            if self.failing or time.monotonic() >= end:
                return False
            self._wake.set()
            await asyncio.sleep(0.01)
        return True

    async def close(self, grace_s: float = 15.0) -> None:
        """Write everything that is waiting, then stop. What the store has not taken after
        ``grace_s`` seconds (``spill_s`` while it fails) goes to the journal for the next start."""
        self._closing = True
        self._wake.set()
        self._retry.set()
        if self._task is None or self._ticker is None:
            return
        began = time.monotonic()
        while not self._task.done():
            wait_s = min(grace_s, self.spill_s) if self.failing else grace_s
            if (left := began + wait_s - time.monotonic()) <= 0:
                break
            await asyncio.wait({self._task}, timeout=min(left, 0.1))
        for task in (self._task, self._ticker):
            while not task.done():  # a driver may swallow a cancellation: cancel again
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
        if self.in_memory:
            self._try_spill(share=1.0)

    async def _journal_while_failing(self) -> None:
        """While the store fails, every row reaches the journal within ``spill_s``."""
        while True:
            await asyncio.sleep(self.spill_s)
            if self.failing:
                self._try_spill(share=1.0, inflight=True)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that comes
            # with the event (close() sets them and may cancel at once).
            if delay:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry.wait()
                self._retry.clear()
            elif not self._files:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_s):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the store is down: keep the rows, retry
                self.errors += 1
                delay = min(max(delay * 2, 0.2), MAX_BACKOFF_S) * (0.8 + 0.4 * random.random())  # noqa: S311
                if not self._down:
                    self._down = True
                    log.warning("store write failed; buffering and retrying", store=self.name,
                                error=str(e) or type(e).__name__, backlog=self.backlog)
                continue
            if self._down:
                self._down = self._spill_logged = False
                log.info("store writes recovered", store=self.name, backlog=self.backlog,
                         spilled_total=self.spilled)
            delay = 0.0
            if not self._files:
                self._spill_logged = False  # caught up: the next spill is news again
                if self._closing and not self.in_memory:
                    return

    async def _attempt(self) -> None:
        """Write memory, then the oldest journal file. While the store is down the retries
        are made from the journal, so that no row waits in memory only."""
        if self._down:
            self._try_spill(share=1.0)
        await self._flush()
        await self._unspool_one()

    async def _flush(self) -> None:
        for kind, q in self._queues.items():
            while q:
                n = min(len(q), self.batch)
                # The batch stays at the head of the queue until the store took it; a spill
                # meanwhile leaves those rows alone (``_inflight``), so the pops below remove
                # exactly them.
                self._inflight = (kind, n)
                self._inflight_journaled = False
                try:
                    await self._write_batch(kind, [q[i] for i in range(n)])
                except BaseException:
                    if self._inflight_journaled:  # retried from the journal, which has them
                        for _ in range(n):
                            q.popleft()
                    raise
                finally:
                    self._inflight = None
                for _ in range(n):
                    q.popleft()
                self.written += n

    async def _write_batch(self, kind: str, rows: list[object]) -> None:
        self._write_since = time.monotonic()
        try:
            await self._write_rows(kind, rows)
        finally:
            self._write_since = None

    async def _write_rows(self, kind: str, rows: list[object]) -> None:
        write = self.kinds[kind][1]
        try:
            await write(rows)
        except Exception:
            if not await self._store_answers():
                raise
            for row in rows:  # the store is up but refuses the batch: find the bad rows
                try:
                    await write([row])
                except Exception as e:
                    if not await self._store_answers():
                        raise
                    self._reject(kind, row, e)

    async def _store_answers(self) -> bool:
        if self.ping is None:
            return False
        try:
            await asyncio.wait_for(self.ping(), PING_TIMEOUT_S)
        except Exception:  # any failure means the store is not answering
            return False
        return True

    def _reject(self, kind: str, row: object, e: Exception) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        with (self.spool / REJECTED).open("ab") as f:
            f.write(msgspec.json.encode((kind, [row])) + b"\n")
        self.rejected += 1
        log.error("store refused a row; kept in rejected.jsonl", store=self.name, kind=kind,
                  error=str(e)[:300] or type(e).__name__, rejected=self.rejected)

    # ---- spill journal ----------------------------------------------------------------------

    def _spool_files(self) -> list[Path]:
        if not self.spool.exists():
            return []
        return sorted(p for p in self.spool.glob("*.jsonl") if p.name != REJECTED)

    def _try_spill(self, share: float = 0.5, inflight: bool = False) -> None:
        """``_spill``; when the journal cannot be written the rows stay in memory (logged)."""
        try:
            self._spill(share, inflight)
        except OSError as e:
            if not self._spill_failed:
                log.error("spill journal not writable; rows stay in memory", store=self.name,
                          error=str(e), in_memory=self.in_memory)
            self._spill_failed = True
        else:
            self._spill_failed = False

    def _spill(self, share: float = 0.5, inflight: bool = False) -> None:
        """Move the oldest ``share`` of the waiting rows of every kind to a journal file. The
        batch being written stays in memory for its write; ``inflight`` also copies it to the
        journal (once), and ``_flush`` drops it from memory if the write then fails."""
        copy = inflight and not self._inflight_journaled
        moves: dict[str, tuple[int, int, int]] = {}  # kind: (first journaled, in flight, moved)
        for kind, q in self._queues.items():
            keep = self._inflight[1] if self._inflight and self._inflight[0] == kind else 0
            n = int((len(q) - keep) * share)
            if keep + n > (first := 0 if copy else keep):
                moves[kind] = (first, keep, n)
        if not moves:
            return
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / f"spill-{time.time_ns()}-{os.getpid()}.jsonl"
        enc = msgspec.json.Encoder()
        with path.open("ab") as f:  # rows leave memory only once they are on disk
            for kind, (first, keep, n) in moves.items():
                rows = list(islice(self._queues[kind], first, keep + n))
                f.write(enc.encode((kind, rows)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        for kind, (_, keep, n) in moves.items():
            q = self._queues[kind]
            head = [q.popleft() for _ in range(keep)]  # being written: stays for its write
            for _ in range(n):
                q.popleft()
            q.extendleft(reversed(head))
        self._inflight_journaled |= copy and self._inflight is not None
        self._files.append(path)
        self._unspooled.clear()
        moved = sum(keep + n - first for first, keep, n in moves.values())
        self.spilled += moved
        self._journal_rows += moved
        self._wake.set()
        if not self._spill_logged:  # once per outage; the recovery line gives the total
            self._spill_logged = True
            log.warning("store backlog spilled to disk", store=self.name, rows=moved,
                        file=str(path))

    def _read(self, path: Path, report: bool = True) -> list[tuple[str, list[object]]]:
        """The journal file's batches; an unreadable line is counted and logged (``report``)."""
        out: list[tuple[str, list[object]]] = []
        for line in path.read_bytes().splitlines():
            try:
                kind = msgspec.json.decode(line)[0]
                row_type: Any = list.__class_getitem__(self.kinds[kind][0])  # built at runtime
                out.append(msgspec.json.decode(line, type=tuple[str, row_type]))
            except (msgspec.DecodeError, KeyError, IndexError, TypeError) as e:
                if not report:
                    continue
                self.rejected += 1  # e.g. a line cut short by a crash while spilling
                log.error("unreadable spill journal line skipped", store=self.name,
                          file=str(path), error=str(e)[:300], line=line[:200].decode(
                              errors="replace"))
        return out

    async def _unspool_one(self) -> None:
        """Write the oldest journal file back in batches; delete it once the store has it all.
        (Order does not matter: every write is idempotent and bars keep the newest revision.)"""
        if not self._files:
            return
        path = self._files[0]
        n = 0
        for kind, rows in self._read(path):
            for i in range(0, len(rows), self.batch):
                await self._write_batch(kind, rows[i:i + self.batch])
            n += len(rows)
        path.unlink()
        self._files.pop(0)
        if not self._files:
            self._unspooled.set()
        self._journal_rows = max(0, self._journal_rows - n)
        self.written += n
