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
(:class:`SideInference`) and marked ``side_inferred``.

Errors::

    AlpacaError            an error message from the server (code and text)
    └── fatal when the code means retrying cannot help (auth failed, insufficient subscription)
"""

from __future__ import annotations

import calendar
import functools
import os
import time
from collections.abc import Callable
from typing import Final

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection

from aetherion.config import MarketConfig, Settings
from aetherion.domain import BUY, SELL, UNKNOWN_SIDE, BookSnapshot, Tick
from aetherion.ingest.base import Checkpoints, Outbox
from aetherion.ingest.orderbook import TrailingBook
from aetherion.ingest.stream import Frame, StreamConnector, StreamError

__all__ = [
    "ERROR_CODES", "AlpacaConnector", "AlpacaError", "AlpacaParser", "SideInference",
    "check_credentials", "rfc3339_ns",
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


class AlpacaError(StreamError):
    """An ``error`` message of the stream."""

    def __init__(self, code: int, msg: str) -> None:
        name, fatal = ERROR_CODES.get(code, (msg, False))
        super().__init__(f"alpaca error {code}: {msg or name}", fatal=fatal)
        self.code = code


# ---- wire structs --------------------------------------------------------------------------


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


class _Quote(msgspec.Struct, frozen=True):
    S: str
    bp: float
    bs: float
    ap: float
    as_: float = msgspec.field(name="as")
    t: str = ""


class _Control(msgspec.Struct, frozen=True):
    msg: str = ""
    code: int = 0


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


class SideInference:
    """The quote rule, falling back to the tick rule.

    A trade at or above the ask is a buy, at or below the bid a sell. Inside the spread (or
    before any usable quote) the tick rule decides: above the previous trade price a buy, below
    it a sell, at the same price the previous trade's side. Unknown before the first decision.
    """

    __slots__ = ("ask", "bid", "last_price", "last_side")

    def __init__(self) -> None:
        self.bid = 0.0
        self.ask = 0.0
        self.last_price = 0.0
        self.last_side = UNKNOWN_SIDE

    def quote(self, bid: float, ask: float) -> None:
        """The current best bid and ask; a crossed or empty side is not used."""
        ok = bid > 0 and ask > 0 and bid <= ask
        self.bid, self.ask = (bid, ask) if ok else (0.0, 0.0)

    def side(self, price: float) -> int:
        if self.ask and price >= self.ask:
            side = BUY
        elif self.bid and price <= self.bid:
            side = SELL
        elif self.last_price and price != self.last_price:
            side = BUY if price > self.last_price else SELL
        else:
            side = self.last_side
        self.last_price, self.last_side = price, side
        return side


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
                    self._on_quote(self._quote.decode(raw), recv_ns)
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
        side = self.sides.side(m.p)
        trade_id = str(m.i) if m.i is not None else None
        return Tick(self.market_id, rfc3339_ns(m.t) // 1_000_000, m.p, m.s, side, trade_id,
                    recv_ns, side != UNKNOWN_SIDE)

    def _on_quote(self, m: _Quote, recv_ns: int) -> None:
        if m.S != self.symbol:
            return
        ts_ns = rfc3339_ns(m.t)
        self.sides.quote(m.bp, m.ap)
        bids = ((m.bp, m.bs),) if m.bp > 0 else ()
        asks = ((m.ap, m.as_),) if m.ap > 0 else ()
        self._pending = BookSnapshot(self.market_id, ts_ns // 1_000_000, bids, asks, ts_ns)

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


# ---- credentials and connector -------------------------------------------------------------


def check_credentials(market: MarketConfig) -> str | None:
    """The one line that stops start-up when the market's API key or secret is missing."""
    names = {"api_key_env": market.api_key_env, "api_secret_env": market.api_secret_env}
    unnamed = [k for k, v in names.items() if not v]
    if unnamed:
        return (f"market {market.id}: connector 'alpaca' needs {' and '.join(unnamed)} "
                f"(names of the environment variables holding the Alpaca API key and secret)")
    unset = [v for v in names.values() if v and not os.environ.get(v)]
    if unset:
        return (f"market {market.id}: connector 'alpaca' needs the environment variable(s) "
                f"{', '.join(unset)} set to the Alpaca API key and secret")
    return None


class AlpacaConnector(StreamConnector):
    """Trades and top of book of one US symbol from Alpaca's stream."""

    name = "alpaca"

    def __init__(
        self, market: MarketConfig, settings: Settings, checkpoints: Checkpoints | None = None
    ) -> None:
        super().__init__(market, settings, checkpoints)
        self.url = market.ws_url or DEFAULT_URL.format(feed=market.feed or "iex")
        self.parser = AlpacaParser(market.id, market.symbol)
        self.trailing = TrailingBook(f"book-trailing-{market.id}", self.parser.flush)
        self._held: BookSnapshot | None = None

    async def run(self, out: Outbox) -> None:
        self.trailing.start(out)
        try:
            await super().run(out)
        finally:
            await self.trailing.stop()

    def credentials_error(self) -> str | None:
        return check_credentials(self.market)

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

    def decode(self, frame: Frame) -> tuple[list[Tick], BookSnapshot | None]:
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
