"""Reconnect pacing and silent-connection detection, shared by every live connector.

:class:`Backoff` spaces reconnect attempts: exponential, capped, with full jitter, and back to
the first step once a connection has stayed healthy for ``healthy_s``. :class:`Watchdog` treats
a connection that delivered nothing for ``timeout_s`` as dead and raises
:class:`SilentConnection`: either each wait for a message goes through :meth:`Watchdog.next`
(the time spent handling a message does not count as silence), or a whole reader that feeds it
runs under :meth:`Watchdog.guard`.

The loop that uses both is :class:`aetherion.ingest.live.LiveConnector`::

    backoff, dog = Backoff(), Watchdog(10.0)
    while True:
        try:
            async with connect(url) as ws:
                backoff.connected()
                while True:
                    handle(await dog.next(ws.recv))
        except (OSError, SilentConnection, ...) as e:
            stats.on_error(e, where=url)        # last_error, its time, reconnects += 1
        await backoff.wait()
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Backoff", "SilentConnection", "Watchdog"]

T = TypeVar("T")


class SilentConnection(ConnectionError):
    """Nothing arrived within the watchdog's timeout: the connection is treated as dead."""


class Backoff:
    """Delays between reconnect attempts: ``initial * factor**n`` capped at ``cap``, jittered.

    With ``jitter`` j the delay is drawn uniformly from ``[d * (1 - j), d]`` so that many
    clients cut at once do not come back in step. A connection that lasted ``healthy_s`` or
    more resets the sequence (the next failure waits ``initial`` again).
    """

    def __init__(self, initial_s: float = 0.5, cap_s: float = 30.0, factor: float = 2.0,
                 jitter: float = 0.5, healthy_s: float = 10.0,
                 rng: random.Random | None = None) -> None:
        if initial_s <= 0 or cap_s < initial_s or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial_s <= cap_s, factor >= 1 and 0 <= jitter <= 1")
        self.initial_s, self.cap_s, self.factor = initial_s, cap_s, factor
        self.jitter, self.healthy_s = jitter, healthy_s
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._connected_at: float | None = None

    def connected(self) -> None:
        """A connection is up; if it lasts ``healthy_s`` the next delay starts over."""
        self._connected_at = time.monotonic()

    def reset(self) -> None:
        self.attempt = 0
        self._connected_at = None

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        if (self._connected_at is not None
                and time.monotonic() - self._connected_at >= self.healthy_s):
            self.attempt = 0
        self._connected_at = None
        base = min(self.cap_s, self.initial_s * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter * self._rng.random())

    async def wait(self) -> float:
        """Sleep the next delay; returns it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


class Watchdog:
    """Declares a connection dead after ``timeout_s`` without a :meth:`feed`."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.timeout_s = timeout_s
        self.last = time.monotonic()
        self.fired = 0  # how many times it declared a connection dead

    def feed(self) -> None:
        self.last = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last

    async def expired(self) -> None:
        """Return once nothing was fed for ``timeout_s``."""
        while True:
            left = self.timeout_s - self.silent_for()
            if left <= 0:
                return
            await asyncio.sleep(min(left, self.timeout_s / 4) + 0.001)

    async def next(self, receive: Callable[[], Awaitable[T]],
                   quiet_ok: Callable[[], bool] = lambda: False) -> T:
        """The next message, ``await receive()``; :class:`SilentConnection` when none comes
        within ``timeout_s`` of starting to wait, unless ``quiet_ok()`` (silence is normal now,
        e.g. outside market hours: wait again). ``receive`` must be safe to cancel."""
        while True:
            timer = asyncio.timeout(self.timeout_s)
            try:
                async with timer:
                    item = await receive()
            except TimeoutError:
                if not timer.expired():
                    raise  # receive() itself timed out
                if quiet_ok():
                    continue
                self.fired += 1
                raise SilentConnection(f"no message for {self.timeout_s:g} s") from None
            self.feed()
            return item

    async def guard(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; if the connection goes silent first, cancel it and raise
        :class:`SilentConnection`. The timer starts afresh here."""
        self.feed()
        work = asyncio.ensure_future(aw)
        dog = asyncio.ensure_future(self.expired())
        try:
            await asyncio.wait((work, dog), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (work, dog):
                if not t.done():
                    t.cancel()
            await asyncio.gather(work, dog, return_exceptions=True)
        if work.done() and not work.cancelled():
            return work.result()
        self.fired += 1
        raise SilentConnection(f"no message for {self.timeout_s:g} s")
