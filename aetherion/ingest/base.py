"""What every connector shares: its config, its output, its connection state and its counters.

A connector is built from its own frozen config (:class:`ConnectorConfig` or a venue's subclass
of it; :func:`aetherion.ingest.registry.build_connector` derives it from the settings) and runs
as one task per market (``await connector.run(out)``) until cancelled. It owns its reconnects; it
normalizes venue messages into :class:`~aetherion.domain.Tick` batches and
:class:`~aetherion.domain.BookSnapshot` objects at the edge and puts them on ``out``, a bounded
queue (so a slow pipeline slows the reader instead of growing memory).

Every connector records a failure in one place, :meth:`ConnectorStats.on_error`: a short text
(what kind of failure — DNS lookup, connection refused, timeout, HTTP status, the venue's error
code — with URL queries and credential values removed) and when it happened, both shown by
``/api/market/status`` as ``last_error`` and ``last_error_at``; a retried failure counts the
reconnect attempt that follows, so a market that never connected shows its attempts.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Protocol, runtime_checkable

from aetherion.config import MarketConfig
from aetherion.domain import Bar, BookSnapshot, Tick

__all__ = [
    "Checkpoints", "ConnState", "Connector", "ConnectorConfig", "ConnectorStats",
    "LatencyWindow", "Outbox", "Output", "Resumable", "describe", "secret_envs"]

ConnState = Literal[
    "connecting", "live", "reconnecting", "resyncing", "failed", "closed", "stopped"
]
Output = list[Tick] | BookSnapshot
Outbox = asyncio.Queue[Output]

ERROR_CHARS: Final = 300  # longest error text kept
_KINDS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (socket.gaierror, "DNS lookup failed"),
    (ConnectionRefusedError, "connection refused"),
    (TimeoutError, "timed out"),
)
_URL_QUERY: Final = re.compile(r"([a-zA-Z][\w+.-]*://[^\s?#'\"]*)[?#][^\s'\"]*")


def describe(error: BaseException, where: str | None = None) -> str:
    """``kind: where: message: root cause`` — the kind of failure (DNS lookup failed,
    connection refused, timed out, else the exception's class) found anywhere in the chain of
    causes, ``where`` (the URL tried) unless the message names it already, then the messages."""
    chain = [error]
    while len(chain) < 8 and (up := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(up)
    kind = next((label for e in chain for cls, label in _KINDS if isinstance(e, cls)),
                type(error).__name__)
    parts = [str(e) for e in (error, chain[-1]) if str(e)]
    if where and not any(where in p for p in parts):
        parts.insert(0, where)
    return ": ".join(dict.fromkeys([kind, *parts]))


class LatencyWindow:
    """The last ``size`` samples of a latency, in milliseconds."""

    __slots__ = ("_samples",)

    def __init__(self, size: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._samples.append(ms)

    def summary(self) -> dict[str, float | None]:
        if not self._samples:
            return {"p50": None, "p99": None, "max": None}
        s = sorted(self._samples)
        n = len(s)
        return {
            "p50": round(s[(n - 1) // 2], 3),
            "p99": round(s[min(n - 1, int(0.99 * n))], 3),
            "max": round(s[-1], 3),
        }


class ConnectorStats:
    """Connection state and counters of one market, as ``/api/market/status`` shows them.

    ``secret_envs``: names of the environment variables holding the market's credentials; their
    values never reach an error text."""

    def __init__(self, secret_envs: tuple[str, ...] = ()) -> None:
        self.state: ConnState = "connecting"
        self.messages = 0
        self.malformed = 0
        self.reconnects = 0
        self.gaps_detected = 0
        self.gaps_filled = 0
        self.backfilled = 0  # trades fetched over REST to fill gaps
        self.book_resyncs = 0  # order book rebuilt from a fresh snapshot after a sequence gap
        self.last_message_mono: float | None = None
        self.last_error: str | None = None
        self.last_error_at: int | None = None  # epoch ms
        self.secret_envs = secret_envs
        self.exchange_to_receive = LatencyWindow()
        self.receive_to_processed = LatencyWindow()
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=64)

    def on_messages(self, count: int = 1) -> None:
        now = time.monotonic()
        self.messages += count
        self.last_message_mono = now
        self._rate_window.append((now, self.messages))

    def on_error(self, error: BaseException | str, *, where: str | None = None,
                 state: ConnState | None = "reconnecting") -> str:
        """Record a failure and when; returns its text (see :func:`describe`). ``state``: what
        the failure leaves the connection in; ``reconnecting`` counts the attempt that follows,
        ``None`` (an error the venue reported on a connection that goes on) changes nothing."""
        text = error if isinstance(error, str) else describe(error, where)
        text = _URL_QUERY.sub(r"\1", text)
        for name in self.secret_envs:
            value = os.environ.get(name, "")
            if len(value) >= 4:
                text = text.replace(value, "***")
        self.last_error = text[:ERROR_CHARS]
        self.last_error_at = time.time_ns() // 1_000_000
        if state is not None:
            self.state = state
        if state == "reconnecting":
            self.reconnects += 1
        return self.last_error

    def msg_rate(self) -> float:
        """Messages per second over the last few seconds (0 when quiet)."""
        now = time.monotonic()
        while self._rate_window and now - self._rate_window[0][0] > 5.0:
            self._rate_window.popleft()
        if not self._rate_window:
            return 0.0
        t0, n0 = self._rate_window[0]
        span = max(now - t0, 1.0)
        return round((self.messages - n0) / span, 2)

    def last_message_age_s(self) -> float | None:
        if self.last_message_mono is None:
            return None
        return round(time.monotonic() - self.last_message_mono, 3)

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "msg_rate": self.msg_rate(),
            "last_message_age_s": self.last_message_age_s(),
            "messages": self.messages,
            "malformed": self.malformed,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "gaps_detected": self.gaps_detected,
            "gaps_filled": self.gaps_filled,
            "backfilled": self.backfilled,
            "book_resyncs": self.book_resyncs,
            "latency_ms": {
                "exchange_to_receive": self.exchange_to_receive.summary(),
                "receive_to_processed": self.receive_to_processed.summary(),
            },
        }


def secret_envs(market: MarketConfig) -> tuple[str, ...]:
    """Names of the environment variables that hold the market's credentials."""
    names = (market.api_key_env, market.api_secret_env, market.access_token_env)
    return tuple(n for n in names if n)


class Checkpoints(Protocol):
    """Where a connector keeps what it must remember across restarts (``system_state``)."""

    async def get_state(self, key: str) -> dict[str, Any] | None: ...

    async def set_state(self, key: str, value: dict[str, Any]) -> None: ...


@runtime_checkable
class Resumable(Protocol):
    """A connector that makes its prices up (the simulator): it goes on from a stored price."""

    def resume(self, price: float, ts_ms: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """What a connector is built from: its market (venue, symbol, URLs, credential names).
    Venues add their own options in a subclass (defaults are the production values)."""

    market: MarketConfig


class Connector(abc.ABC):
    """One market's source of ticks and books."""

    name: ClassVar[str] = "connector"
    config_type: ClassVar[type[ConnectorConfig]] = ConnectorConfig

    def __init__(self, config: ConnectorConfig, checkpoints: Checkpoints | None = None) -> None:
        self.config = config
        self.market = config.market
        self.checkpoints = checkpoints
        self.stats = ConnectorStats(secret_envs(self.market))
        self.processed_tick: Tick | None = None  # newest tick the pipeline has taken

    def processed(self, tick: Tick) -> None:
        """The pipeline has taken every tick up to ``tick``. Checkpoints record this, not what
        was last queued: a tick still in the queue when the process dies is fetched again."""
        self.processed_tick = tick

    async def save_checkpoint(self) -> None:  # noqa: B027 - most connectors keep none
        """Record the position now (the server calls it once the queue is drained)."""

    @abc.abstractmethod
    async def run(self, out: Outbox) -> None:
        """Stream until cancelled, reconnecting as needed; never raise on bad input."""

    async def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        """Up to ``limit`` closed bars before ``end_ms``, oldest first, to bootstrap models.

        Empty when the venue offers no history.
        """
        return []
