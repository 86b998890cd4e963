"""US equities from Alpaca's market data stream v2 (``wss://stream.data.alpaca.markets/v2/{feed}``).

The protocol: the server greets with ``[{"T":"success","msg":"connected"}]``; the client sends
``{"action":"auth","key":…,"secret":…}`` (within the server's auth timeout) and, once
``authenticated``, ``{"action":"subscribe","trades":[sym],"quotes":[sym]}``. Every frame is a JSON
array of messages told apart by ``T``: ``t`` trades become :class:`~aetherion.domain.Tick`\\ s,
``q`` quotes become a top-of-book :class:`~aetherion.domain.BookSnapshot` (``us_orderbook``; at
most one per :data:`BOOK_MIN_INTERVAL_MS` of quote time, and the newest one when the interval ends
with no further quote), and ``error`` messages (auth failed, connection limit, …) become
connector states.

Alpaca publishes no aggressor side, so it is inferred by the quote rule
(:class:`~aetherion.ingest.sides.SideInference`) and marked ``side_inferred``.

Errors::

    AlpacaError (VenueError)   an error message from the server (code and text)
    └── fatal when the code means retrying cannot help (auth failed, insufficient subscription)
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import ClassVar, Final

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection

from aetherion.domain import UNKNOWN_SIDE, BookSnapshot, Tick
from aetherion.ingest.base import Checkpoints, ConnectorConfig, Outbox, secret_envs
from aetherion.ingest.live import VenueError
from aetherion.ingest.orderbook import TrailingBook
from aetherion.ingest.sides import SideInference
from aetherion.ingest.stream import Frame, StreamConfig, StreamConnector, StreamStats

__all__ = [
    "BOOK_MIN_INTERVAL_MS", "ERROR_CODES", "AlpacaConfig", "AlpacaConnector", "AlpacaError",
    "AlpacaParser", "rfc3339_ns",
]

log = structlog.get_logger(__name__)

DEFAULT_URL: Final = "wss://stream.data.alpaca.markets/v2/{feed}"
BOOK_MIN_INTERVAL_MS: Final = 50  # at most one top-of-book snapshot per 50 ms of quote time

#: Alpaca's stream error codes; ``True`` marks the ones where reconnecting cannot help.
ERROR_CODES: Final[dict[int, tuple[str, bool]]] = {
    400: ("invalid syntax", False),
    401: ("not authenticated", False),
    402: ("auth failed", True),
    403: ("already authenticated", False),
    404: ("auth timeout", False),
    405: ("symbol limit exceeded", True),
    406: ("connection limit exceeded", False),
    407: ("slow client", False),
    409: ("insufficient subscription", True),
    410: ("invalid subscribe action for this feed", True),
    500: ("internal error", False),
}


class AlpacaError(VenueError):
    """An ``error`` message of the stream."""

    def __init__(self, code: int, msg: str) -> None:
        name, fatal = ERROR_CODES.get(code, (msg, False))
        super().__init__(f"alpaca error {code}: {msg or name}", fatal=fatal)
        self.code = code


@dataclass(frozen=True, slots=True)
class AlpacaConfig(StreamConfig):
    watchdog_s: float = 30.0  # quiet symbols say nothing for a while, even in session


# ---- wire structs --------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _second_ns(prefix: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) → epoch ns; cached, the prefix changes once a second."""
    y, mo, d = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10])
    h, mi, s = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
    if prefix[4] != "-" or prefix[7] != "-" or prefix[10] not in "Tt " or prefix[13] != ":":
        raise ValueError(f"not an RFC-3339 time: {prefix!r}")
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1_000_000_000


def rfc3339_ns(text: str) -> int:
    """An RFC-3339 UTC time with up to nanosecond digits (Alpaca's ``t``) → epoch ns, exactly."""
    if not text.endswith(("Z", "z")):
        raise ValueError(f"not a UTC RFC-3339 time: {text!r}")
    base = _second_ns(text[:19])
    frac = text[19:-1]
    if not frac:
        return base
    if frac[0] != "." or not frac[1:].isdigit() or len(frac) > 10:
        raise ValueError(f"bad fraction in {text!r}")
    return base + int(frac[1:].ljust(9, "0"))


class _Head(msgspec.Struct):
    T: str


class _Trade(msgspec.Struct, frozen=True):
    S: str
    p: float
    s: float
    t: str
    i: int | None = None
    x: str | None = None
    c: list[str] | None = None
    z: str | None = None

    def parse_to_tick(self, market_id: str, side: int, recv_ns: int) -> Tick:
        """``ValueError`` for a time that is not RFC-3339 UTC."""
        trade_id = str(self.i) if self.i is not None else None
        return Tick(market_id, rfc3339_ns(self.t) // 1_000_000, self.p, self.s, side, trade_id,
                    recv_ns, side != UNKNOWN_SIDE)


class _Quote(msgspec.Struct, frozen=True):
    S: str
    bp: float
    bs: float
    ap: float
    as_: float = msgspec.field(name="as")
    t: str = ""

    def parse_to_book(self, market_id: str) -> BookSnapshot:
        """Top of book, sequenced by the quote time in ns; ``ValueError`` for a bad time."""
        ts_ns = rfc3339_ns(self.t)
        bids = ((self.bp, self.bs),) if self.bp > 0 else ()
        asks = ((self.ap, self.as_),) if self.ap > 0 else ()
        return BookSnapshot(market_id, ts_ns // 1_000_000, bids, asks, ts_ns)


class _Control(msgspec.Struct, frozen=True):
    msg: str = ""
    code: int = 0


# ---- parser --------------------------------------------------------------------------------


class AlpacaParser:
    """Turns stream frames into ticks and top-of-book snapshots of one market.

    ``feed`` returns the ticks of a frame and the latest quote as a book (at most one every
    :data:`BOOK_MIN_INTERVAL_MS`); the quote held back (:attr:`held`) is :meth:`left_ms` away
    from its interval's end, when :meth:`flush` gives it. Control messages go to
    ``on_control(T, msg, code)``. A message that does not decode is counted in ``malformed`` and
    skipped.
    """

    def __init__(self, market_id: str, symbol: str) -> None:
        self.market_id = market_id
        self.symbol = symbol
        self.sides = SideInference()
        self.malformed = 0
        self.last_error: str | None = None
        self._frame = msgspec.json.Decoder(list[msgspec.Raw])
        self._head = msgspec.json.Decoder(_Head)
        self._trade = msgspec.json.Decoder(_Trade)
        self._quote = msgspec.json.Decoder(_Quote)
        self._control = msgspec.json.Decoder(_Control)
        self._last_book_ms = 0
        self._pending: BookSnapshot | None = None
        self._sent: BookSnapshot | None = None

    def feed(
        self, data: str | bytes, recv_ns: int,
        on_control: Callable[[str, str, int], None] | None = None,
    ) -> tuple[list[Tick], BookSnapshot | None]:
        try:
            items = self._frame.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            self._bad(f"frame is not a JSON array: {e}")
            return [], None
        ticks: list[Tick] = []
        for raw in items:
            try:
                kind = self._head.decode(raw).T
                if kind == "t":
                    tick = self._on_trade(self._trade.decode(raw), recv_ns)
                    if tick is not None:
                        ticks.append(tick)
                elif kind == "q":
                    self._on_quote(self._quote.decode(raw))
                elif kind in ("success", "error", "subscription"):
                    c = self._control.decode(raw)
                    if on_control is not None:
                        on_control(kind, c.msg, c.code)
            except (msgspec.DecodeError, ValueError) as e:
                self._bad(f"{e} in {bytes(raw)[:200]!r}")
        return ticks, self._take_book()

    def _bad(self, why: str) -> None:
        self.malformed += 1
        self.last_error = why
        log.warning("alpaca message skipped", market=self.market_id, reason=why)

    def _on_trade(self, m: _Trade, recv_ns: int) -> Tick | None:
        if m.S != self.symbol:
            return None
        if not (m.p > 0 and m.s > 0):
            raise ValueError(f"trade with price {m.p} and size {m.s}")
        return m.parse_to_tick(self.market_id, self.sides.side(m.p), recv_ns)

    def _on_quote(self, m: _Quote) -> None:
        if m.S != self.symbol:
            return
        book = m.parse_to_book(self.market_id)
        self.sides.quote(m.bp, m.ap)
        self._pending = book

    def _take_book(self) -> BookSnapshot | None:
        book = self._pending
        if book is None or book.ts - self._last_book_ms < BOOK_MIN_INTERVAL_MS:
            return None
        self._pending = None
        self._last_book_ms, self._sent = book.ts, book
        return book

    @property
    def held(self) -> BookSnapshot | None:
        """The newest book, held back inside the interval of the last one put out."""
        return self._pending

    def left_ms(self, book: BookSnapshot) -> int:
        """Quote-time ms left in the interval ``book`` was held back in."""
        return min(max(BOOK_MIN_INTERVAL_MS - (book.ts - self._last_book_ms), 0),
                   BOOK_MIN_INTERVAL_MS)

    def flush(self) -> BookSnapshot | None:
        """The book held back, at its interval's end; ``None`` when it shows what was sent."""
        book, self._pending = self._pending, None
        sent = self._sent
        if book is None or (sent is not None and (book.bids, book.asks) == (sent.bids,
                                                                            sent.asks)):
            return None
        self._last_book_ms, self._sent = book.ts, book
        return book


# ---- the connector -------------------------------------------------------------------------


class AlpacaConnector(StreamConnector):
    """Trades and top of book of one US symbol from Alpaca's stream."""

    name = "alpaca"
    config: AlpacaConfig
    config_type: ClassVar[type[ConnectorConfig]] = AlpacaConfig
    authenticates = True

    def __init__(self, config: AlpacaConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        m = self.market
        self.stats: StreamStats = StreamStats(m.venue, secret_envs(m))
        self.url = m.ws_url or DEFAULT_URL.format(feed=m.feed or "iex")
        self.parser = AlpacaParser(m.id, m.symbol)
        self.trailing = TrailingBook(f"book-trailing-{m.id}", self.parser.flush)
        self._held: BookSnapshot | None = None

    @contextlib.asynccontextmanager
    async def lifetime(self, out: Outbox) -> AsyncIterator[None]:
        self.trailing.start(out)
        try:
            yield
        finally:
            await self.trailing.stop()

    def connect_url(self) -> str:
        return self.url

    async def handshake(self, ws: ClientConnection) -> None:
        """Greeting, auth and subscription; raises :class:`AlpacaError` on an error reply."""
        await self._expect(ws, "connected")
        key = os.environ.get(self.market.api_key_env or "", "")
        secret = os.environ.get(self.market.api_secret_env or "", "")
        await ws.send(msgspec.json.encode({"action": "auth", "key": key, "secret": secret}))
        await self._expect(ws, "authenticated")
        sym = [self.market.symbol]
        await ws.send(msgspec.json.encode({"action": "subscribe", "trades": sym, "quotes": sym}))

    async def _expect(self, ws: ClientConnection, what: str) -> None:
        got: list[tuple[str, str, int]] = []
        while not any(k == "success" and m == what for k, m, _ in got):
            self._feed(Frame(await ws.recv(), time.time_ns()), lambda *c: got.append(c))
            for kind, msg, code in got:
                if kind == "error":
                    raise AlpacaError(code, msg)

    async def on_frame(self, data: str | bytes, recv_ns: int) -> None:
        await self.emit_frame(*self.decode(Frame(data, recv_ns)))

    def decode(self, frame: Frame) -> tuple[list[Tick], BookSnapshot | None]:
        """Ticks and at most one book of a frame; what is malformed is counted and skipped."""
        got = self._feed(frame, self._control)
        held = self.parser.held
        if held is not None and held is not self._held:
            # a newer quote held back: no quote may come to end its interval, the clock will
            self._held = held
            self.trailing.hold(self.parser.left_ms(held) / 1000)
        return got

    def _feed(
        self, frame: Frame, on_control: Callable[[str, str, int], None]
    ) -> tuple[list[Tick], BookSnapshot | None]:
        before = self.parser.malformed
        try:
            return self.parser.feed(frame.data, frame.recv_ns, on_control)
        finally:
            self.stats.malformed += self.parser.malformed - before

    def _control(self, kind: str, msg: str, code: int) -> None:
        if kind == "error":
            raise AlpacaError(code, msg)
        if kind == "subscription":
            log.info("alpaca subscribed", market=self.market.id)
