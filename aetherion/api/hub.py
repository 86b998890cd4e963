"""WebSocket fan-out: one hub per stream, one bounded queue and writer per client.

Publishing never waits: a message is encoded once and put on every interested client's queue; a
client whose queue is full is too slow, and is dropped (closed with code 1013) rather than waited
for. A new client first receives a snapshot per market it follows, then live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["Hub", "encode"]

log = structlog.get_logger(__name__)

TRY_AGAIN_LATER = 1013


def encode(kind: str, market: str, payload: dict[str, Any]) -> str:
    """One stream message: ``{"type": kind, "market": market, **payload}`` as JSON text."""
    return orjson.dumps({"type": kind, "market": market, **payload}).decode()


class _Client:
    __slots__ = ("dropped", "markets", "queue", "writer")

    def __init__(self, markets: frozenset[str] | None, size: int) -> None:
        self.markets = markets
        self.queue: asyncio.Queue[str] = asyncio.Queue(size)
        self.dropped = False
        self.writer: asyncio.Task[None] | None = None

    def wants(self, market: str) -> bool:
        return self.markets is None or market in self.markets


class Hub:
    """Clients of one WebSocket stream (``market``, ``regime`` or ``decision``)."""

    def __init__(self, stream: str, queue_size: int = 2000) -> None:
        self.stream = stream
        self.queue_size = queue_size
        self._clients: set[_Client] = set()
        self.messages = 0
        self.dropped_clients = 0

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def publish(self, market: str, text: str) -> None:
        """Queue ``text`` for every client following ``market``; drop the ones that lag."""
        for c in self._clients:
            if c.dropped or not c.wants(market):
                continue
            try:
                c.queue.put_nowait(text)
                self.messages += 1
            except asyncio.QueueFull:
                c.dropped = True
                self.dropped_clients += 1
                if c.writer is not None:
                    c.writer.cancel()  # it may be stuck in a send; serve() closes the socket
                log.warning("websocket client too slow, dropped", stream=self.stream)

    async def serve(
        self,
        ws: WebSocket,
        markets: frozenset[str] | None,
        snapshot: Callable[[frozenset[str] | None], list[str]],
    ) -> None:
        """Run one accepted client until it leaves or is dropped."""
        client = _Client(markets, self.queue_size)
        # Registered before the snapshot is taken, so nothing published in between is missed.
        self._clients.add(client)
        try:
            writer = client.writer = asyncio.create_task(_write(ws, client, snapshot(markets)))
            reader = asyncio.create_task(_drain(ws))
            _, pending = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._clients.discard(client)
        if client.dropped:
            # A client that stopped reading may never take the close frame: don't wait long.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close(TRY_AGAIN_LATER, "client too slow")


async def _write(ws: WebSocket, client: _Client, first: list[str]) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # the client left
        for text in first:
            await ws.send_text(text)
        while True:
            await ws.send_text(await client.queue.get())


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, to notice when it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
