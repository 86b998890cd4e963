"""The session loop every live connector shares: connect, catch up, read under the watchdog,
classify the error as retry or stop, back off.

A venue says only what differs, in small hooks of :class:`LiveConnector`:

- :meth:`~LiveConnector.connect`: an async context that opens the connection (handshake
  included) and closes it, with whatever the session started, on exit;
- :meth:`~LiveConnector.catch_up`: put out what was missed while away (REST backfill, a book
  snapshot); the state it leaves (``live``, or ``resyncing`` while a book is built);
- :meth:`~LiveConnector.read`: read until the connection fails, every wait for a message
  through :meth:`Watchdog.next <aetherion.ingest.backoff.Watchdog.next>` on :attr:`watchdog`;
- :meth:`~LiveConnector.classify`: what an error means (below);
- :meth:`~LiveConnector.position` and :meth:`~LiveConnector.restore`, with
  :attr:`~LiveConnector.checkpoint_prefix`: what the checkpoint records and how it is taken back
  (:mod:`aetherion.ingest.checkpoint` decides when it is saved);
- :meth:`~LiveConnector.problem`: what stops the connector before it tries (by default the
  registry's credentials check); :meth:`~LiveConnector.lifetime`: what lives as long as ``run``.

The loop::

    problem()             → failed, stop
    restore(checkpoint)
    repeat:  connecting (first attempt) / reconnecting
             async with connect():  backoff.connected(); catch_up(); read()
             classify(error):  stop → failed, return  |  retry → last_error, reconnects + 1
             save the checkpoint; back off (reset after a healthy connection)

The loop leaves the state as it is when cancelled; its owner says ``stopped``.

Errors, as the default :meth:`~LiveConnector.classify` reads them::

    VenueError               the venue said no; fatal: stop, else retry (its text as it is)
    OSError                  the network, a connect or handshake too slow (TimeoutError) and
                             SilentConnection (the watchdog): retry
    anything else            not ours: raised (the runtime logs it and shows the market failed)
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import structlog

from aetherion.domain import BookSnapshot, Tick
from aetherion.ingest.backoff import Backoff, Watchdog
from aetherion.ingest.base import Checkpoints, Connector, ConnectorConfig, Outbox
from aetherion.ingest.checkpoint import Checkpointer, Position
from aetherion.ingest.registry import credentials_problem

__all__ = ["Failure", "LiveConfig", "LiveConnector", "VenueError"]

log = structlog.get_logger(__name__)


class VenueError(Exception):
    """An error the venue reported; ``fatal`` when reconnecting cannot help (auth failed)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Failure:
    """What a session's error means: the text or error to record (``where``: the URL tried),
    and whether the connector stops (``failed``) instead of retrying."""

    error: BaseException | str
    stop: bool = False
    where: str | None = None


@dataclass(frozen=True, slots=True)
class LiveConfig(ConnectorConfig):
    """``watchdog_s``: silence that counts as a dead connection; ``backoff_*``: reconnect
    delays (:class:`~aetherion.ingest.backoff.Backoff`); ``checkpoint_every_s``: at most one
    checkpoint write per this many seconds as the position moves."""

    watchdog_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_cap_s: float = 30.0
    checkpoint_every_s: float = 1.0


class LiveConnector(Connector, abc.ABC):
    """A connector to a live venue: the session loop, with the venue's hooks."""

    config: LiveConfig
    config_type: ClassVar[type[ConnectorConfig]] = LiveConfig
    #: ``system_state`` key prefix of the checkpoint (the market id follows); ``None``: none.
    checkpoint_prefix: ClassVar[str | None] = None

    def __init__(self, config: LiveConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_cap_s)
        self.watchdog = Watchdog(config.watchdog_s)
        prefix = self.checkpoint_prefix
        self.checkpointer = Checkpointer(checkpoints if prefix is not None else None,
                                         f"{prefix}{self.market.id}", config.checkpoint_every_s,
                                         self.position)
        self.out: Outbox | None = None
        self.attempts = 0  # connection attempts

    # hooks -------------------------------------------------------------------------------------

    def problem(self) -> str | None:
        """The line that says why the connector cannot start at all, or ``None``."""
        return credentials_problem(self.market)

    @contextlib.asynccontextmanager
    async def lifetime(self, out: Outbox) -> AsyncIterator[None]:
        """What lives as long as :meth:`run` (a REST client, a book task)."""
        yield

    @abc.abstractmethod
    def connect(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Open the connection (and handshake); close it and what the session started on exit."""

    async def catch_up(self) -> None:
        """Put out what was missed while away; the connection is ``live`` unless a book is
        still being built."""
        self.stats.state = "live"

    @abc.abstractmethod
    async def read(self) -> None:
        """Read until the connection fails (raise); each wait under :attr:`watchdog`."""

    def classify(self, error: Exception) -> Failure | None:
        """What ``error`` means for the connector; ``None``: not a connection's fate (raised)."""
        if isinstance(error, VenueError):
            return Failure(str(error), stop=error.fatal)
        if isinstance(error, OSError):
            return Failure(error, where=self.where())
        return None

    def where(self) -> str | None:
        """The URL a network error is reported against (none may carry credentials)."""
        return None

    def position(self) -> Position | None:
        """What the checkpoint records now (``None``: nothing yet)."""
        return None

    def restore(self, state: Position) -> None:
        """Take back a checkpoint (empty: none was stored)."""

    # the loop ----------------------------------------------------------------------------------

    async def run(self, out: Outbox) -> None:
        self.out = out
        problem = self.problem()
        if problem:
            self._stop(problem)
            return
        self.restore(await self.checkpointer.load())
        async with self.lifetime(out):
            while True:
                self.stats.state = "reconnecting" if self.attempts else "connecting"
                self.attempts += 1
                try:
                    await self._session()
                except Exception as e:
                    failure = self.classify(e)
                    if failure is None:
                        raise
                    if failure.stop:
                        self._stop(failure.error, failure.where)
                        return
                    text = self.stats.on_error(failure.error, where=failure.where)
                    log.warning("connection lost", market=self.market.id, connector=self.name,
                                error=text)
                await self.checkpointer.save(force=True)
                await self.backoff.wait()

    async def _session(self) -> None:
        async with self.connect():
            self.backoff.connected()
            log.info("connected", market=self.market.id, connector=self.name, url=self.where())
            await self.catch_up()
            await self.read()
        raise ConnectionError("closed by the venue")

    def _stop(self, why: BaseException | str, where: str | None = None) -> None:
        text = self.stats.on_error(why, where=where, state="failed")
        log.error("connector stopped", market=self.market.id, connector=self.name, reason=text)

    # what sessions share -----------------------------------------------------------------------

    async def emit(self, ticks: list[Tick]) -> None:
        """Put a batch out (the connector then says ``await self.checkpointer.save()`` once
        its own bookkeeping is done: the position is written at most every
        ``checkpoint_every_s``)."""
        if ticks and self.out is not None:
            await self.out.put(ticks)

    async def emit_book(self, book: BookSnapshot) -> None:
        if self.out is not None:
            await self.out.put(book)

    async def save_checkpoint(self) -> None:
        await self.checkpointer.save(force=True)
