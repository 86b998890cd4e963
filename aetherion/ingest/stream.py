"""The websocket loop the equity connectors share: connect, handshake, read, reconnect.

A :class:`StreamConnector` subclass says how to reach its venue (``connect_url``), what to say
after connecting (``handshake``) and how to turn one received frame into ticks and a book
(``decode``). This loop does the rest, with the shared :mod:`aetherion.ingest.backoff`:
reconnects with capped, jittered exponential back-off (reset after a healthy connection), a
watchdog that reconnects a socket silent for ``silence_s`` while the venue's session is open
(outside it, quiet is normal and the websocket ping keeps watch), and connection states with the
last error in ``/api/market/status``.

Errors::

    StreamError         the venue said no (``fatal``: retrying cannot help, e.g. auth failed)
    SilentConnection    (backoff) nothing arrived for ``silence_s`` during the session
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from aetherion.config import MarketConfig, Settings
from aetherion.domain import BookSnapshot, Tick
from aetherion.ingest.backoff import Backoff, SilentConnection, Watchdog
from aetherion.ingest.base import (
    Checkpoints,
    Connector,
    ConnectorStats,
    ConnState,
    Outbox,
    secret_envs,
)
from aetherion.ingest.sessions import session_open

__all__ = ["Frame", "StreamConnector", "StreamError", "StreamStats"]

log = structlog.get_logger(__name__)


class StreamError(Exception):
    """An error the venue reported; ``fatal`` when reconnecting cannot help."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class Frame:
    data: str | bytes
    recv_ns: int  # local receive time, epoch ns


class StreamStats(ConnectorStats):
    """Connector stats plus the current error (``None`` once live again) and whether the
    venue's session is open."""

    def __init__(self, venue: str, secret_envs: tuple[str, ...] = ()) -> None:
        super().__init__(secret_envs)
        self.venue = venue
        self.error: str | None = None

    def on_error(self, error: BaseException | str, *, where: str | None = None,
                 state: ConnState | None = "reconnecting") -> str:
        self.error = super().on_error(error, where=where, state=state)
        return self.error

    def as_dict(self) -> dict[str, object]:
        out = super().as_dict()
        out["error"] = self.error
        out["session"] = "open" if session_open(self.venue, time.time_ns() // 1_000_000) \
            else "closed"
        return out


class StreamConnector(Connector, abc.ABC):
    """A connector reading one websocket; subclasses speak the venue's protocol."""

    silence_s = 30.0  # watchdog: reconnect after this long without a message in session
    open_timeout_s = 10.0  # connect + handshake
    backoff_initial_s = 0.5
    backoff_cap_s = 30.0
    max_frame_bytes = 2**22

    def __init__(
        self, market: MarketConfig, settings: Settings, checkpoints: Checkpoints | None = None
    ) -> None:
        super().__init__(market, settings, checkpoints)
        self.stats: StreamStats = StreamStats(market.venue, secret_envs(market))
        self.session_open = session_open
        self.watchdog = Watchdog(self.silence_s)
        self.connections = 0

    @abc.abstractmethod
    def credentials_error(self) -> str | None:
        """The line that says which credential is missing, or ``None``."""

    @abc.abstractmethod
    def connect_url(self) -> str:
        """Where to connect (may carry credentials: never log it)."""

    @abc.abstractmethod
    async def handshake(self, ws: ClientConnection) -> None:
        """Authenticate and subscribe; raise :class:`StreamError` when the venue refuses."""

    @abc.abstractmethod
    def decode(self, frame: Frame) -> tuple[list[Tick], BookSnapshot | None]:
        """Ticks and at most one book of a frame; count and skip what is malformed."""

    def connect_headers(self) -> dict[str, str]:
        """Extra HTTP headers of the websocket upgrade request."""
        return {}

    def safe_url(self) -> str:
        return self.connect_url().split("?", 1)[0]

    async def run(self, out: Outbox) -> None:
        problem = self.credentials_error()
        if problem:
            self._fail(problem)
            return
        backoff = Backoff(self.backoff_initial_s, self.backoff_cap_s)
        self.watchdog = Watchdog(self.silence_s)
        while True:
            try:
                await self._connection(out, backoff)
            except StreamError as e:
                if e.fatal:
                    self._fail(str(e))
                    return
                self._lost(str(e))
            except (OSError, TimeoutError, WebSocketException) as e:
                self._lost(e)
            await backoff.wait()

    def _fail(self, why: str) -> None:
        why = self.stats.on_error(why, state="failed")
        log.error("connector stopped", market=self.market.id, connector=self.name, reason=why)

    def _lost(self, why: BaseException | str) -> None:
        """Record the loss (this counts the reconnect attempt that follows) and log it."""
        text = self.stats.on_error(why, where=self.safe_url())
        log.warning("connection lost", market=self.market.id, connector=self.name,
                    url=self.safe_url(), reason=text)

    async def _connection(self, out: Outbox, backoff: Backoff) -> None:
        if self.stats.state != "reconnecting":
            self.stats.state = "connecting"
        try:
            async with asyncio.timeout(self.open_timeout_s):
                ws = await connect(self.connect_url(), max_size=self.max_frame_bytes,
                                   additional_headers=self.connect_headers(),
                                   open_timeout=None, compression=None)
        except InvalidURI:
            raise StreamError(f"bad ws_url {self.safe_url()!r}", fatal=True) from None
        except InvalidStatus as e:
            status = e.response.status_code
            raise StreamError(f"websocket upgrade refused with HTTP {status}"
                              + (" (credentials rejected)" if status in (401, 403) else ""),
                              fatal=status in (401, 403)) from None
        except InvalidHandshake as e:
            raise StreamError(f"websocket handshake refused: {e}") from None
        async with ws:
            self.connections += 1
            async with asyncio.timeout(self.open_timeout_s):
                await self.handshake(ws)
            self.stats.state, self.stats.error = "live", None
            backoff.connected()
            log.info("connected", market=self.market.id, connector=self.name,
                     url=self.safe_url())
            await self._read(ws, out)

    async def _read(self, ws: ClientConnection, out: Outbox) -> None:
        dog = self.watchdog
        dog.feed()
        while True:
            try:
                async with asyncio.timeout(max(dog.timeout_s - dog.silent_for(), 0.001)):
                    data: Any = await ws.recv()
            except TimeoutError:
                if self.session_open(self.market.venue, time.time_ns() // 1_000_000):
                    dog.fired += 1
                    raise SilentConnection(f"no message for {dog.timeout_s:g} s in session") \
                        from None
                dog.feed()  # closed market: quiet is normal; websocket pings watch the socket
                continue
            dog.feed()
            self.stats.on_messages()
            ticks, book = self.decode(Frame(data, time.time_ns()))
            if ticks:
                await out.put(ticks)
            if book is not None:
                await out.put(book)
