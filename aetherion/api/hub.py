"""WebSocket fan-out: one hub per stream, sends straight from the publisher, a bounded backlog per
client that cannot keep up.

Publishing never waits. A message is encoded once and, for each interested client, its send is
started at once: while the client's socket takes writes (the usual case) the send completes there
and then, with no task switch, as a plain broadcast loop would. A send that has to wait (the
socket's buffer is full) is finished by a task of that client's own, and the messages published
meanwhile queue behind it in its backlog, in order. A client whose backlog is full, or whose send
has waited longer than the send timeout, is too slow: it is dropped (closed with code 1013) rather
than waited for. A new client first receives a snapshot per market it follows, then live messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["Hub"]

log = structlog.get_logger(__name__)

TRY_AGAIN_LATER = 1013
_GONE = (WebSocketDisconnect, RuntimeError, OSError)  # what a send to a client that left raises


class _Client:
    __slots__ = ("backlog", "busy", "done", "dropped", "flusher", "markets", "ws")

    def __init__(self, ws: WebSocket, markets: frozenset[str] | None) -> None:
        self.ws = ws
        self.markets = markets
        self.backlog: deque[str] = deque()
        self.busy = True  # a send is waiting or the backlog is being sent: new messages queue
        self.dropped = False
        self.done = asyncio.Event()  # the client left or was dropped
        self.flusher: asyncio.Task[None] | None = None

    def wants(self, market: str) -> bool:
        return self.markets is None or market in self.markets


@types.coroutine
def _finish(send: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    """Await the rest of a send coroutine that was started by hand and is waiting on
    ``waiting_on`` (what it yielded)."""
    try:
        yield waiting_on
    except BaseException:
        send.close()
        raise
    yield from send


class Hub:
    """Clients of one WebSocket stream (``market``, ``regime`` or ``decision``)."""

    def __init__(self, stream: str, queue_size: int = 2000, send_timeout: float = 10.0) -> None:
        self.stream = stream
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self._clients: set[_Client] = set()
        self.messages = 0
        self.dropped_clients = 0

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def wanted(self) -> frozenset[str] | None:
        """The markets some client follows; ``None`` when one follows every market."""
        out: set[str] = set()
        for c in self._clients:
            if c.markets is None:
                return None
            out |= c.markets
        return frozenset(out)

    def publish(self, market: str, text: str) -> None:
        """Send ``text`` to every client following ``market``; drop the ones that lag."""
        for c in self._clients:
            if c.dropped or not c.wants(market):
                continue
            if not c.busy:
                self._send_now(c, text)
            elif len(c.backlog) < self.queue_size:
                c.backlog.append(text)
            else:
                self._drop(c, "backlog full")
                continue
            self.messages += 1

    def _send_now(self, c: _Client, text: str) -> None:
        send = c.ws.send_text(text)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            return  # sent
        except Exception as e:  # runs in the publisher (the pipeline): never let a send fail it
            self._gone(c, e)
            return
        c.busy = True
        c.flusher = asyncio.create_task(self._flush(c, _finish(send, waiting_on), []))

    async def _flush(self, c: _Client, head: Coroutine[Any, Any, None] | None,
                     first: list[str]) -> None:
        """Finish a waiting send, then send ``first`` and the backlog in order."""
        try:
            if head is not None:
                await self._timed(head)
            for text in first:
                await self._timed(c.ws.send_text(text))
            while c.backlog:
                await self._timed(c.ws.send_text(c.backlog.popleft()))
            c.busy = False
        except TimeoutError:
            self._drop(c, "send timed out")
        except Exception as e:
            self._gone(c, e)

    async def _timed(self, send: Coroutine[Any, Any, None]) -> None:
        async with asyncio.timeout(self.send_timeout):
            await send

    def _gone(self, c: _Client, e: Exception) -> None:
        """A send failed: the client left (or, logged, something unexpected); it is done."""
        if not isinstance(e, _GONE):
            log.exception("websocket send failed", stream=self.stream)
        c.done.set()

    def _drop(self, c: _Client, why: str) -> None:
        c.dropped = True
        c.backlog.clear()
        self.dropped_clients += 1
        if c.flusher is not None and c.flusher is not asyncio.current_task():
            c.flusher.cancel()  # it is stuck in a send; serve() closes the socket
        c.done.set()
        log.warning("websocket client too slow, dropped", stream=self.stream, reason=why)

    async def serve(
        self,
        ws: WebSocket,
        markets: frozenset[str] | None,
        snapshot: Callable[[frozenset[str] | None], list[str]],
    ) -> None:
        """Run one accepted client until it leaves or is dropped."""
        client = _Client(ws, markets)
        # Registered (busy, so live messages wait in its backlog) before the snapshot is taken,
        # so nothing published in between is missed.
        self._clients.add(client)
        try:
            client.flusher = asyncio.create_task(self._flush(client, None, snapshot(markets)))
            reader = asyncio.create_task(_drain(ws))
            done = asyncio.create_task(client.done.wait())
            await asyncio.wait({reader, done}, return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, done, client.flusher):
                t.cancel()
            await asyncio.gather(reader, done, client.flusher, return_exceptions=True)
        finally:
            self._clients.discard(client)
        if client.dropped:
            # A client that stopped reading may never take the close frame: don't wait long.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await ws.close(TRY_AGAIN_LATER, "client too slow")


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, to notice when it goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
