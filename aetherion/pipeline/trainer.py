"""Who fits the regime models a pipeline asks for, and when the fit takes effect.

A :class:`Trainer` gets each :class:`~aetherion.regime.model.TrainRequest` and later hands the
result to ``pipeline.install``. :class:`InlineTrainer` fits at once (replay, tests);
:class:`WorkerTrainer` fits in a worker process, off the event loop, and installs when the fit
comes back (live). ``on_event`` is told whenever event time moves on: a trainer that replays
what a live run did installs the fits that had arrived by then
(:class:`~aetherion.pipeline.replay.StoredTrainer`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Protocol

import structlog

from aetherion.regime.model import FitResult, TrainRequest, fit

if TYPE_CHECKING:
    from aetherion.pipeline.stages import MarketPipeline

__all__ = ["InlineTrainer", "Trainer", "WorkerTrainer"]

log = structlog.get_logger(__name__)


class Trainer(Protocol):
    def request(self, pipeline: MarketPipeline, req: TrainRequest) -> None: ...

    def on_event(self, pipeline: MarketPipeline) -> None: ...


class InlineTrainer:
    """Fit at once: the model takes effect from the next bar."""

    def request(self, pipeline: MarketPipeline, req: TrainRequest) -> None:
        pipeline.install(fit(req))

    def on_event(self, pipeline: MarketPipeline) -> None:
        pass


def _worker_init() -> None:
    """Training workers leave Ctrl-C to the server, which shuts them down in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)  # judged by the fit's own checks


class WorkerTrainer:
    """Fits in one worker process (started on the first request), one fit at a time; the
    result is installed on the event loop when it arrives."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._running: set[asyncio.Future[FitResult]] = set()

    def request(self, pipeline: MarketPipeline, req: TrainRequest) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init)
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fit, req)
        self._running.add(fut)

        def done(f: asyncio.Future[FitResult]) -> None:
            self._running.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("regime training failed", market=req.market, timeframe=req.timeframe,
                          error=str(exc) or type(exc).__name__)
                pipeline.install(FitResult(req, False, f"training failed: {exc}"))
                return
            pipeline.install(f.result())

        fut.add_done_callback(done)

    def on_event(self, pipeline: MarketPipeline) -> None:
        pass

    async def close(self) -> None:
        """Drop what was not started; a fit still running is waited for off the event loop."""
        for f in list(self._running):
            f.cancel()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
            self._pool = None


