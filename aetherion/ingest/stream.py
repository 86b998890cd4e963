"""The websocket session the native connectors share (Binance, Alpaca, Kite), on the loop of
:class:`~aetherion.ingest.live.LiveConnector`.

A :class:`StreamConnector` subclass says how to reach its venue (:meth:`connect_url`, headers,
socket options), what to say after connecting (:meth:`handshake`) and what to do with one
received frame (:meth:`on_frame`). This module opens the socket (connect and handshake within
``open_timeout_s``) and reads it: every frame counts once in ``messages``, and a socket silent
for ``watchdog_s`` while the venue's session is open is dead (outside the session quiet is
normal and the websocket's own ping keeps watch, see :mod:`aetherion.ingest.sessions`).

Errors (besides those of the loop)::

    InvalidURI                        VenueError, fatal: "bad ws_url ..."
    upgrade refused (InvalidStatus)   venues that check credentials while connecting
                                      (``authenticates``): VenueError, fatal for HTTP 401/403;
                                      others: retried as it is
    WebSocketException                (a closed socket, a protocol error): retry
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from aetherion.domain import BookSnapshot, Tick
from aetherion.ingest.base import Checkpoints, ConnectorConfig, ConnectorStats, ConnState
from aetherion.ingest.live import Failure, LiveConfig, LiveConnector, VenueError
from aetherion.ingest.sessions import session_open

__all__ = ["Frame", "StreamConfig", "StreamConnector", "StreamStats"]


@dataclass(frozen=True, slots=True)
class Frame:
    data: str | bytes
    recv_ns: int  # local receive time, epoch ns


@dataclass(frozen=True, slots=True)
class StreamConfig(LiveConfig):
    """``open_timeout_s``: connect and handshake, each."""

    open_timeout_s: float = 10.0


class StreamStats(ConnectorStats):
    """Connector stats plus the current error (``None`` once live again) and whether the
    venue's session is open."""

    def __init__(self, venue: str, secret_envs: tuple[str, ...] = ()) -> None:
        self.venue = venue
        self.error: str | None = None
        super().__init__(secret_envs)

    @property
    def state(self) -> ConnState:
        return self._state

    @state.setter
    def state(self, value: ConnState) -> None:
        self._state = value
        if value == "live":
            self.error = None

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


class StreamConnector(LiveConnector, abc.ABC):
    """A connector reading one websocket; subclasses speak the venue's protocol."""

    config: StreamConfig
    config_type: ClassVar[type[ConnectorConfig]] = StreamConfig
    #: The venue checks credentials while connecting: a refused upgrade is said in plain words,
    #: and HTTP 401/403 (credentials rejected) stops the connector.
    authenticates: ClassVar[bool] = False
    max_frame_bytes: ClassVar[int] = 2**22

    def __init__(self, config: StreamConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        self.session_open = session_open  # market hours (tests replace it)
        self.ws: ClientConnection | None = None

    @abc.abstractmethod
    def connect_url(self) -> str:
        """Where to connect (may carry credentials: never log it, see :meth:`where`)."""

    def connect_headers(self) -> dict[str, str]:
        """Extra HTTP headers of the websocket upgrade request."""
        return {}

    def socket_options(self) -> dict[str, Any]:
        """Options of :func:`websockets.asyncio.client.connect` beyond URL, size and headers."""
        return {"compression": None}

    async def handshake(self, ws: ClientConnection) -> None:
        """Authenticate and subscribe; raise :class:`VenueError` when the venue refuses."""

    @abc.abstractmethod
    async def on_frame(self, data: str | bytes, recv_ns: int) -> None:
        """Handle one received frame; count and skip what is malformed, never raise on it."""

    def where(self) -> str:
        return self.connect_url().split("?", 1)[0]

    def classify(self, error: Exception) -> Failure | None:
        if isinstance(error, WebSocketException):
            return Failure(error, where=self.where())
        return super().classify(error)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        timeout = self.config.open_timeout_s
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(self.connect_url(), max_size=self.max_frame_bytes,
                                   additional_headers=self.connect_headers(),
                                   open_timeout=None, **self.socket_options())
        except InvalidURI:
            raise VenueError(f"bad ws_url {self.where()!r}", fatal=True) from None
        except InvalidHandshake as e:
            if not self.authenticates:
                raise
            raise _refused(e) from None
        async with ws:
            async with asyncio.timeout(timeout):
                await self.handshake(ws)
            self.ws = ws
            try:
                yield
            finally:
                self.ws = None

    async def read(self) -> None:
        ws, stats, next_frame, on_frame = self.ws, self.stats, self.watchdog.next, self.on_frame
        if ws is None:
            raise ConnectionError("not connected")
        venue = self.market.venue

        def quiet_ok() -> bool:
            return not self.session_open(venue, time.time_ns() // 1_000_000)

        while True:
            data: str | bytes = await next_frame(ws.recv, quiet_ok)
            recv_ns = time.time_ns()
            stats.on_messages()
            await on_frame(data, recv_ns)

    async def emit_frame(self, ticks: list[Tick], book: BookSnapshot | None) -> None:
        """A frame's ticks as one batch, then its book (at most one)."""
        await self.emit(ticks)
        if book is not None:
            await self.emit_book(book)


def _refused(e: InvalidHandshake) -> VenueError:
    if not isinstance(e, InvalidStatus):
        return VenueError(f"websocket handshake refused: {e}")
    status = e.response.status_code
    rejected = status in (401, 403)
    return VenueError(f"websocket upgrade refused with HTTP {status}"
                      + (" (credentials rejected)" if rejected else ""), fatal=rejected)
