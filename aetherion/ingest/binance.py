"""Native Binance spot connector: its own websocket client for ``<symbol>@trade`` and
``<symbol>@depth@100ms`` (the session of :mod:`aetherion.ingest.stream`), ccxt for REST
(markets, depth snapshots, trade backfill, klines).

Frames are decoded in one pass into typed msgspec Structs (a union tagged by the event type
``e``) that convert themselves (``parse_to_tick``, ``parse_to_bar``); a frame that does not
decode is counted in ``stats.malformed``, logged with a truncated payload and skipped. Trade ids
are consecutive per symbol, so a hole is a gap: the missing trades are fetched over REST by id
(``historicalTrades``, public, no key) and put out in order before the trade that revealed the
hole; duplicates are dropped. After every (re)connect the connector first catches up from the
last processed id to the newest trade. The last processed id is checkpointed
(``connector:<market>`` in ``system_state``) so a restart resumes there.

Errors (besides those of the websocket session)::

    BadSymbol (ccxt)          the symbol is unknown: stop
    BinanceError              a REST answer that cannot be used: retry
    ccxt network / exchange errors: retry (their text names the URL)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar
from urllib.parse import urlencode

import ccxt.async_support as ccxt_async
import msgspec
import structlog

from aetherion.domain import BUY, SELL, Bar, BookSnapshot, Tick
from aetherion.ingest.base import Checkpoints, ConnectorConfig, Outbox
from aetherion.ingest.checkpoint import Position
from aetherion.ingest.live import Failure
from aetherion.ingest.orderbook import OrderBook, TrailingBook
from aetherion.ingest.stream import StreamConfig, StreamConnector

__all__ = [
    "BinanceConfig", "BinanceConnector", "BinanceDecoder", "BinanceError", "DepthMsg",
    "Kline", "RestTrade", "TradeMsg",
]

log = structlog.get_logger(__name__)

WS_URL = "wss://stream.binance.com:9443/stream"
REST_URL = "https://api.binance.com/api/v3"
#: Binance kline intervals among our timeframes (it has no 5s klines).
KLINE_INTERVALS = frozenset({"1s", "1m", "5m", "15m", "1h", "4h", "1d"})
REST_PAGE = 1000  # historicalTrades and klines maximum
RAW_LOG_CHARS = 200


class BinanceError(Exception):
    """A Binance REST answer the connector cannot use."""


# ---- wire format ---------------------------------------------------------------------------


#: A price is positive, a size not negative, both finite (below 1e300; NaN fails too); anything
#: else fails the decode (counted and skipped as malformed), so it never reaches a bar.
Price = Annotated[float, msgspec.Meta(gt=0, lt=1e300)]
Size = Annotated[float, msgspec.Meta(ge=0, lt=1e300)]


class TradeMsg(msgspec.Struct, tag_field="e", tag="trade", frozen=True, gc=False):
    E: int  # event time
    s: str
    t: int  # trade id
    p: Price
    q: Size
    T: int  # trade time
    m: bool  # buyer is the maker: the aggressor sold

    def parse_to_tick(self, market_id: str, recv_ns: int) -> Tick:
        return Tick(market_id, self.T, self.p, self.q, SELL if self.m else BUY, str(self.t),
                    recv_ns)


class DepthMsg(msgspec.Struct, tag_field="e", tag="depthUpdate", frozen=True):
    E: int
    s: str
    U: int  # first update id in the event
    u: int  # last update id
    b: list[tuple[Price, Size]]
    a: list[tuple[Price, Size]]


class _Envelope(msgspec.Struct, frozen=True, gc=False):
    data: TradeMsg | DepthMsg  # "stream" is not read: "data" says what it is and for which symbol


class RestTrade(msgspec.Struct, frozen=True):
    """A row of ``trades`` / ``historicalTrades``."""

    id: int
    price: Price
    qty: Size
    time: int
    buyer_maker: bool = msgspec.field(name="isBuyerMaker")

    def parse_to_tick(self, market_id: str) -> Tick:
        """Not received live: ``recv_ns`` 0 keeps it out of the latency figures."""
        return Tick(market_id, self.time, self.price, self.qty,
                    SELL if self.buyer_maker else BUY, str(self.id))


class DepthSnapshot(msgspec.Struct, frozen=True):
    last_update_id: int = msgspec.field(name="lastUpdateId")
    bids: list[tuple[Price, Size]]
    asks: list[tuple[Price, Size]]


class Kline(msgspec.Struct, array_like=True, frozen=True):
    """A row of ``klines`` (later fields of the row are not read)."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    close_time: int
    quote_volume: float
    trades: int
    taker_buy_volume: float

    def parse_to_bar(self, market_id: str, timeframe: str) -> Bar:
        """A closed bar; the taker-buy volume is the buy volume (so volume delta is known)."""
        buy = self.taker_buy_volume
        return Bar(market_id, timeframe, self.open_time, self.open, self.high, self.low,
                   self.close, self.volume, buy, self.volume - buy, self.trades, True,
                   first_ts=self.open_time, last_ts=self.close_time)


class BinanceDecoder:
    """Combined-stream frames → typed messages → ticks. Built once per connector."""

    def __init__(self, market_id: str) -> None:
        self.market_id = market_id
        # strict=False: Binance sends prices and sizes as strings; they decode to floats
        self._decoder = msgspec.json.Decoder(_Envelope, strict=False)

    def decode(self, raw: str | bytes) -> TradeMsg | DepthMsg:
        """Raises ``msgspec.DecodeError`` (a ``ValidationError`` too) on a bad frame."""
        return self._decoder.decode(raw).data

    def tick(self, m: TradeMsg, recv_ns: int) -> Tick:
        return m.parse_to_tick(self.market_id, recv_ns)


def _convert(body: Any, kind: Any, what: str) -> Any:
    """A REST answer as typed rows; :class:`BinanceError` when it is not what Binance sends."""
    try:
        return msgspec.convert(body, kind, strict=False)
    except msgspec.ValidationError as e:
        raise BinanceError(f"unexpected {what} answer: {e}") from e


# ---- the connector -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BinanceConfig(StreamConfig):
    """``book_depth`` levels a side go out at most every ``book_interval_s`` (the newest book
    goes out when the interval ends, if it differs from the last one sent); ``max_backfill``:
    the largest hole filled over REST (a bigger one is logged and partly skipped)."""

    book_depth: int = 20
    book_interval_s: float = 0.25
    max_backfill: int = 200_000


class BinanceConnector(StreamConnector):
    """One Binance spot market."""

    name = "binance"
    config: BinanceConfig
    config_type: ClassVar[type[ConnectorConfig]] = BinanceConfig
    checkpoint_prefix = "connector:"
    max_frame_bytes = 2**24

    def __init__(self, config: BinanceConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        m = self.market
        self.ws_url = (m.ws_url or WS_URL).rstrip("/")
        self.rest_url = (m.rest_url or REST_URL).rstrip("/")
        self.symbol_id = m.symbol.replace("/", "").upper()
        self.decoder = BinanceDecoder(m.id)
        self.book = OrderBook(m.id)
        self.last_id: int | None = None  # last trade id put out
        self.duplicates = 0
        self._rest: Any = None
        self._book_task: asyncio.Task[None] | None = None
        self._book_sent = 0.0
        self._book_ts = 0  # event time of the last diff applied to the live book
        self._last_book: BookSnapshot | None = None  # the last book put out
        self.trailing = TrailingBook(f"book-trailing-{m.id}", self._trailing_book)
        self._handlers: dict[type, Callable[[Any, int], Awaitable[None]]] = {
            TradeMsg: self._on_trade, DepthMsg: self._on_depth}

    # the session -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifetime(self, out: Outbox) -> AsyncIterator[None]:
        self._rest = self._make_rest()
        self.trailing.start(out)
        try:
            yield
        finally:
            await self._stop_book_task()
            await self.trailing.stop()
            await self._rest.close()

    def _make_rest(self) -> Any:
        ex = ccxt_async.binance({"enableRateLimit": True, "timeout": 10_000,
                                 "options": {"fetchMarkets": {"types": ["spot"]}}})
        ex.urls["api"]["public"] = self.rest_url
        return ex

    def connect_url(self) -> str:
        sym = self.symbol_id.lower()
        return f"{self.ws_url}?streams={sym}@trade/{sym}@depth@100ms"

    def socket_options(self) -> dict[str, Any]:
        t = self.config.watchdog_s
        return {"ping_interval": t / 2, "ping_timeout": t, "close_timeout": 1.0,
                "max_queue": 8192}

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        if not self._rest.markets:
            await self._rest.load_markets()  # exchangeInfo; BadSymbol when unknown
            self.symbol_id = self._rest.market(self.market.symbol)["id"]
        async with super().connect():
            try:
                yield
            finally:
                await self._stop_book_task()

    async def catch_up(self) -> None:
        """The book from a fresh snapshot (``resyncing`` until then), the trades missed."""
        await self._start_resync()
        if self.last_id is not None:
            await self._backfill(self.last_id + 1, None)

    def classify(self, error: Exception) -> Failure | None:
        if isinstance(error, ccxt_async.BadSymbol):
            return Failure(error, stop=True)
        if isinstance(error, ccxt_async.NetworkError | ccxt_async.ExchangeError | BinanceError):
            return Failure(error)  # ccxt's messages name their own URL
        return super().classify(error)

    async def on_frame(self, data: str | bytes, recv_ns: int) -> None:
        try:
            msg = self.decoder.decode(data)
        except msgspec.DecodeError as e:
            self._malformed(data, str(e))
            return
        if msg.s != self.symbol_id:
            self._malformed(data, f"symbol {msg.s!r}, expected {self.symbol_id!r}")
            return
        await self._handlers[type(msg)](msg, recv_ns)

    def _malformed(self, raw: str | bytes, why: str) -> None:
        self.stats.malformed += 1
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        log.warning("binance: malformed message skipped", market=self.market.id, error=why,
                    raw=text[:RAW_LOG_CHARS])

    # checkpoint --------------------------------------------------------------------------------

    def position(self) -> Position | None:
        # ``last_ts`` (as ccxt's checkpoint has it): a new owner or a restart warms up to that
        # trade's bar and rebuilds the bar left open from the stored trades up to it
        # (``pipeline/startup.py``), so the backfilled trades complete it, not replace it.
        tick = self.processed_tick
        if tick is None or not (tick.trade_id and tick.trade_id.isdigit()):
            return None
        return {"last_trade_id": int(tick.trade_id), "last_ts": tick.ts}

    def restore(self, state: Position) -> None:
        last = state.get("last_trade_id")
        if isinstance(last, int):
            self.last_id = last
            log.info("binance: resuming after checkpoint", market=self.market.id, last_id=last)

    # trades ------------------------------------------------------------------------------------

    async def _on_trade(self, m: TradeMsg, recv_ns: int) -> None:
        last = self.last_id
        if last is not None:
            if m.t <= last:
                self.duplicates += 1
                return
            if m.t > last + 1:
                await self._backfill(last + 1, m.t - 1)
                if self.last_id is not None and m.t <= self.last_id:
                    return
        await self.emit([m.parse_to_tick(self.market.id, recv_ns)])
        self.last_id = m.t
        await self.checkpointer.save()

    async def _backfill(self, first: int, last: int | None) -> None:
        """Put out trades ``first..last`` (``None``: up to the newest) fetched over REST."""
        if last is None:
            newest = await self._newest_id()
            if newest is None or newest < first:
                return
            last = newest
        if last - first + 1 > self.config.max_backfill:
            log.error("binance: hole too large to backfill, skipping its start",
                      market=self.market.id, first=first, last=last,
                      kept=self.config.max_backfill)
            first = last - self.config.max_backfill + 1
        self.stats.gaps_detected += 1
        log.info("binance: backfilling", market=self.market.id, first=first, last=last)
        next_id, complete = first, True
        while next_id <= last:
            rows = [r for r in await self._fetch_trades(next_id) if next_id <= r.id <= last]
            if not rows:
                break
            complete &= all(r.id == next_id + i for i, r in enumerate(rows))
            await self.emit([r.parse_to_tick(self.market.id) for r in rows])
            self.stats.backfilled += len(rows)
            next_id = rows[-1].id + 1
            self.last_id = rows[-1].id
        if complete and next_id > last:
            self.stats.gaps_filled += 1
        else:
            log.error("binance: gap not fully filled", market=self.market.id, first=first,
                      last=last, reached=next_id - 1)
        await self.checkpointer.save()

    async def _fetch_trades(self, from_id: int) -> list[RestTrade]:
        query = urlencode({"symbol": self.symbol_id, "fromId": from_id, "limit": REST_PAGE})
        await self._rest.throttle(10)
        body = await self._rest.fetch(f"{self.rest_url}/historicalTrades?{query}", "GET")
        rows: list[RestTrade] = _convert(body, list[RestTrade], "historicalTrades")
        return rows

    async def _newest_id(self) -> int | None:
        body = await self._rest.publicGetTrades({"symbol": self.symbol_id, "limit": 1})
        rows: list[RestTrade] = _convert(body, list[RestTrade], "trades")
        return rows[-1].id if rows else None

    async def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        """Closed klines before ``end_ms`` from the public REST API; empty for an interval
        Binance has not."""
        if timeframe not in KLINE_INTERVALS or limit <= 0:
            return []
        own = self._rest is None
        rest = self._make_rest() if own else self._rest
        bars: list[Bar] = []
        try:
            end = end_ms - 1
            while len(bars) < limit:
                query = urlencode({"symbol": self.symbol_id, "interval": timeframe,
                                   "endTime": end, "limit": min(REST_PAGE, limit - len(bars))})
                body = await rest.fetch(f"{self.rest_url}/klines?{query}", "GET")
                rows: list[Kline] = _convert(body, list[Kline], "klines")
                page = [k.parse_to_bar(self.market.id, timeframe) for k in rows
                        if k.close_time < end_ms]
                if not page:
                    break
                bars[:0] = page
                end = page[0].open_time - 1
                if len(rows) < REST_PAGE:
                    break
        finally:
            if own:
                await rest.close()
        return bars[-limit:]

    # order book --------------------------------------------------------------------------------

    async def _on_depth(self, m: DepthMsg, recv_ns: int) -> None:
        had = self.book.update_id  # a gap resets the book: log the id it had
        if not self.book.on_diff(m.U, m.u, m.b, m.a):
            self.stats.book_resyncs += 1
            log.warning("binance: depth sequence gap, resyncing the book", market=self.market.id,
                        first=m.U, expected=(had or 0) + 1)
            await self._start_resync(reset=False)
            return
        if self.book.state != "live":
            return
        self._book_ts = m.E
        now = time.monotonic()
        interval = self.config.book_interval_s
        if now - self._book_sent >= interval:
            self._book_sent = now
            await self._emit_book(m.E)
        else:
            self.trailing.hold(self._book_sent + interval - now)

    async def _emit_book(self, ts: int) -> None:
        self._last_book = self.book.top(self.config.book_depth, ts)
        await self.emit_book(self._last_book)

    def _trailing_book(self) -> BookSnapshot | None:
        """The live book at the end of the interval, unless it shows what was last sent."""
        if self.book.state != "live":
            return None
        book, last = self.book.top(self.config.book_depth, self._book_ts), self._last_book
        if last is not None and (last.state, last.bids, last.asks) == ("live", book.bids,
                                                                       book.asks):
            return None
        self._last_book, self._book_sent = book, time.monotonic()
        return book

    async def _start_resync(self, reset: bool = True) -> None:
        await self._stop_book_task()
        if reset:
            self.book.reset()
        self.stats.state = "resyncing"
        await self._emit_book(int(time.time() * 1000))
        self._book_task = asyncio.create_task(self._resync(), name=f"book-{self.market.id}")
        self._book_task.add_done_callback(self._book_done)

    def _book_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("binance: book resync failed", market=self.market.id,
                      error=repr(task.exception()))

    async def _resync(self) -> None:
        delay = 0.1
        while True:
            try:
                body = await self._rest.publicGetDepth({"symbol": self.symbol_id, "limit": 1000})
                snap: DepthSnapshot = _convert(body, DepthSnapshot, "depth")
                if self.book.on_snapshot(snap.last_update_id, snap.bids, snap.asks):
                    self.stats.state = "live"
                    self._book_sent = time.monotonic()
                    await self._emit_book(int(time.time() * 1000))
                    log.info("binance: book in sync", market=self.market.id,
                             update_id=snap.last_update_id)
                    return
            except (ccxt_async.NetworkError, ccxt_async.ExchangeError, BinanceError) as e:
                log.warning("binance: depth snapshot failed", market=self.market.id,
                            error=self.stats.on_error(e, state=None))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _stop_book_task(self) -> None:
        task, self._book_task = self._book_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
