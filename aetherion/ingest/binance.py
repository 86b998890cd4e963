"""Native Binance spot connector: its own websocket client for ``<symbol>@trade`` and
``<symbol>@depth@100ms``, ccxt for REST (markets, depth snapshots, trade backfill).

Frames are decoded in one pass into typed msgspec Structs (a union tagged by the event type
``e``); a frame that does not decode is counted in ``stats.malformed``, logged with a truncated
payload and skipped. Trade ids are consecutive per symbol, so a hole is a gap: the missing
trades are fetched over REST by id (``historicalTrades``, public, no key) and put out in order
before the trade that revealed the hole; duplicates are dropped. After every (re)connect the
connector first catches up from the last processed id to the newest trade. The last processed
id is checkpointed (``connector:<market>`` in ``system_state``) so a restart resumes there.

Errors::

    BinanceError             a REST answer that cannot be used (bad symbol is final)
    SilentConnection         (backoff) the socket went quiet: reconnect
    websockets / OS / ccxt network errors: reconnect with back-off
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import urlencode

import ccxt.async_support as ccxt_async
import msgspec
import structlog
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from aetherion.config import MarketConfig, Settings
from aetherion.domain import BUY, SELL, Bar, BookSnapshot, Tick
from aetherion.ingest.backoff import Backoff, SilentConnection, Watchdog
from aetherion.ingest.base import Checkpoints, Connector, Outbox
from aetherion.ingest.orderbook import OrderBook, TrailingBook

__all__ = ["BinanceConnector", "BinanceDecoder", "BinanceError", "DepthMsg", "TradeMsg"]

log = structlog.get_logger(__name__)

WS_URL = "wss://stream.binance.com:9443/stream"
REST_URL = "https://api.binance.com/api/v3"
#: Binance kline intervals among our timeframes (it has no 5s klines).
KLINE_INTERVALS = frozenset({"1s", "1m", "5m", "15m", "1h", "4h", "1d"})
REST_PAGE = 1000  # historicalTrades maximum
RAW_LOG_CHARS = 200
RETRYABLE: tuple[type[BaseException], ...] = (
    OSError, ConnectionClosed, InvalidHandshake, SilentConnection, TimeoutError,
    ccxt_async.NetworkError, ccxt_async.ExchangeNotAvailable,
)


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


class DepthMsg(msgspec.Struct, tag_field="e", tag="depthUpdate", frozen=True):
    E: int
    s: str
    U: int  # first update id in the event
    u: int  # last update id
    b: list[tuple[Price, Size]]
    a: list[tuple[Price, Size]]


class _Envelope(msgspec.Struct, frozen=True, gc=False):
    data: TradeMsg | DepthMsg  # "stream" is not read: "data" says what it is and for which symbol


class _RestTrade(msgspec.Struct, frozen=True):
    id: int
    price: Price
    qty: Size
    time: int
    isBuyerMaker: bool  # noqa: N815 - Binance's name


class _Snapshot(msgspec.Struct, frozen=True):
    lastUpdateId: int  # noqa: N815 - Binance's name
    bids: list[tuple[Price, Size]]
    asks: list[tuple[Price, Size]]


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
        return Tick(self.market_id, m.T, m.p, m.q, SELL if m.m else BUY, str(m.t), recv_ns)

    def rest_ticks(self, rows: list[_RestTrade]) -> list[Tick]:
        mid = self.market_id
        return [Tick(mid, r.time, r.price, r.qty, SELL if r.isBuyerMaker else BUY, str(r.id))
                for r in rows]


# ---- the connector -------------------------------------------------------------------------


class BinanceConnector(Connector):
    """One Binance spot market. Options beyond the factory's three arguments are for tests and
    tuning: ``watchdog_s`` (silence that counts as a dead socket), ``backoff``, ``book_depth``
    and ``book_interval_s`` (top-N snapshots put out at most this often; the newest one goes out
    when the interval ends, if it differs from the last one sent), ``max_backfill``
    (largest hole filled over REST; a bigger one is logged and partly skipped)."""

    name = "binance"

    def __init__(self, market: MarketConfig, settings: Settings,
                 checkpoints: Checkpoints | None = None, *, watchdog_s: float = 10.0,
                 backoff: Backoff | None = None, book_depth: int = 20,
                 book_interval_s: float = 0.25, max_backfill: int = 200_000,
                 checkpoint_every_s: float = 1.0) -> None:
        super().__init__(market, settings, checkpoints)
        self.ws_url = (market.ws_url or WS_URL).rstrip("/")
        self.rest_url = (market.rest_url or REST_URL).rstrip("/")
        self.symbol_id = market.symbol.replace("/", "").upper()
        self.decoder = BinanceDecoder(market.id)
        self.book = OrderBook(market.id)
        self.backoff = backoff or Backoff()
        self.watchdog = Watchdog(watchdog_s)
        self.book_depth, self.book_interval_s = book_depth, book_interval_s
        self.max_backfill = max_backfill
        self.checkpoint_every_s = checkpoint_every_s
        self.last_id: int | None = None  # last trade id put out
        self.duplicates = 0
        self._out: Outbox | None = None
        self._rest: Any = None
        self._book_task: asyncio.Task[None] | None = None
        self._book_sent = 0.0
        self._book_ts = 0  # event time of the last diff applied to the live book
        self._last_book: BookSnapshot | None = None  # the last book put out
        self.trailing = TrailingBook(f"book-trailing-{market.id}", self._trailing_book)
        self._saved_id: int | None = None
        self._saved_at = 0.0
        self._sessions = 0
        self._handlers: dict[type, Callable[[Any, int], Awaitable[None]]] = {
            TradeMsg: self._on_trade, DepthMsg: self._on_depth}

    @property
    def checkpoint_key(self) -> str:
        return f"connector:{self.market.id}"

    # lifecycle ---------------------------------------------------------------------------------

    async def run(self, out: Outbox) -> None:
        self._out = out
        self._rest = self._make_rest()
        self.trailing.start(out)
        try:
            await self._load_checkpoint()
            while True:
                try:
                    await self._session()
                except ccxt_async.BadSymbol as e:
                    log.error("binance: unknown symbol, giving up", market=self.market.id,
                              symbol=self.market.symbol,
                              error=self.stats.on_error(e, state="failed"))
                    return
                except RETRYABLE as e:
                    log.warning("binance: connection lost", market=self.market.id,
                                error=self.stats.on_error(e, where=self._where(e)))
                except (BinanceError, ccxt_async.ExchangeError) as e:
                    log.warning("binance: REST error", market=self.market.id,
                                error=self.stats.on_error(e))
                await self._stop_book_task()
                await self._save_checkpoint(force=True)
                await self.backoff.wait()
        finally:
            if self.stats.state != "failed":
                self.stats.state = "stopped"
            await self._stop_book_task()
            await self.trailing.stop()
            await self._save_checkpoint(force=True)
            await self._rest.close()

    def _where(self, e: BaseException) -> str | None:
        """The websocket's URL for a websocket failure (ccxt's messages name their own URL)."""
        return None if isinstance(e, ccxt_async.BaseError) else self.ws_url

    def _make_rest(self) -> Any:
        ex = ccxt_async.binance({"enableRateLimit": True, "timeout": 10_000,
                                 "options": {"fetchMarkets": {"types": ["spot"]}}})
        ex.urls["api"]["public"] = self.rest_url
        return ex

    async def _session(self) -> None:
        self.stats.state = "connecting" if not self._sessions else "reconnecting"
        if not self._rest.markets:
            await self._rest.load_markets()  # exchangeInfo; BadSymbol when unknown
            self.symbol_id = self._rest.market(self.market.symbol)["id"]
        streams = f"{self.symbol_id.lower()}@trade/{self.symbol_id.lower()}@depth@100ms"
        timeout = self.watchdog.timeout_s
        async with websockets.connect(
            f"{self.ws_url}?streams={streams}", open_timeout=timeout,
            ping_interval=timeout / 2, ping_timeout=timeout, close_timeout=1.0,
            max_size=2**24, max_queue=8192,
        ) as ws:
            self._sessions += 1
            self.backoff.connected()
            log.info("binance: connected", market=self.market.id, url=self.ws_url)
            await self._start_resync()
            if self.last_id is not None:
                await self._backfill(self.last_id + 1, None)
            await self.watchdog.guard(self._read(ws))

    async def _read(self, ws: websockets.ClientConnection) -> None:
        stats, dog, decode, handlers = (self.stats, self.watchdog, self.decoder.decode,
                                        self._handlers)
        async for raw in ws:
            recv_ns = time.time_ns()
            dog.feed()
            stats.on_messages()
            try:
                msg = decode(raw)
            except msgspec.DecodeError as e:
                self._malformed(raw, str(e))
                continue
            if msg.s != self.symbol_id:
                self._malformed(raw, f"symbol {msg.s!r}, expected {self.symbol_id!r}")
                continue
            await handlers[type(msg)](msg, recv_ns)
        raise ConnectionError("closed by the server")

    def _malformed(self, raw: str | bytes, why: str) -> None:
        self.stats.malformed += 1
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        log.warning("binance: malformed message skipped", market=self.market.id, error=why,
                    raw=text[:RAW_LOG_CHARS])

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
        await self._emit([self.decoder.tick(m, recv_ns)])
        self.last_id = m.t
        await self._save_checkpoint()

    async def _emit(self, ticks: list[Tick]) -> None:
        if ticks and self._out is not None:
            await self._out.put(ticks)

    async def _backfill(self, first: int, last: int | None) -> None:
        """Put out trades ``first..last`` (``None``: up to the newest) fetched over REST."""
        if last is None:
            newest = await self._newest_id()
            if newest is None or newest < first:
                return
            last = newest
        if last - first + 1 > self.max_backfill:
            log.error("binance: hole too large to backfill, skipping its start",
                      market=self.market.id, first=first, last=last, kept=self.max_backfill)
            first = last - self.max_backfill + 1
        self.stats.gaps_detected += 1
        log.info("binance: backfilling", market=self.market.id, first=first, last=last)
        next_id, complete = first, True
        while next_id <= last:
            rows = [r for r in await self._fetch_trades(next_id) if next_id <= r.id <= last]
            if not rows:
                break
            complete &= all(r.id == next_id + i for i, r in enumerate(rows))
            await self._emit(self.decoder.rest_ticks(rows))
            self.stats.backfilled += len(rows)
            next_id = rows[-1].id + 1
            self.last_id = rows[-1].id
        if complete and next_id > last:
            self.stats.gaps_filled += 1
        else:
            log.error("binance: gap not fully filled", market=self.market.id, first=first,
                      last=last, reached=next_id - 1)
        await self._save_checkpoint()

    async def history(self, timeframe: str, limit: int, end_ms: int) -> list[Bar]:
        """Closed klines before ``end_ms`` from the public REST API, with the taker-buy volume
        as buy volume (so volume delta is known); empty for an interval Binance has not."""
        if timeframe not in KLINE_INTERVALS or limit <= 0:
            return []
        own = self._rest is None
        rest = self._make_rest() if own else self._rest
        bars: list[Bar] = []
        try:
            end = end_ms - 1
            while len(bars) < limit:
                query = urlencode({"symbol": self.symbol_id, "interval": timeframe,
                                   "endTime": end, "limit": min(1000, limit - len(bars))})
                body = await rest.fetch(f"{self.rest_url}/klines?{query}", "GET")
                rows = self._convert(body, list[tuple[Any, ...]], "klines")
                page = [self._kline(timeframe, r) for r in rows if int(r[6]) < end_ms]
                if not page:
                    break
                bars[:0] = page
                end = page[0].open_time - 1
                if len(rows) < 1000:
                    break
        finally:
            if own:
                await rest.close()
        return bars[-limit:]

    def _kline(self, timeframe: str, r: tuple[Any, ...]) -> Bar:
        vol, buy = float(r[5]), float(r[9])
        return Bar(self.market.id, timeframe, int(r[0]), float(r[1]), float(r[2]), float(r[3]),
                   float(r[4]), vol, buy, vol - buy, int(r[8]), True,
                   first_ts=int(r[0]), last_ts=int(r[6]))

    async def _fetch_trades(self, from_id: int) -> list[_RestTrade]:
        query = urlencode({"symbol": self.symbol_id, "fromId": from_id, "limit": REST_PAGE})
        await self._rest.throttle(10)
        body = await self._rest.fetch(f"{self.rest_url}/historicalTrades?{query}", "GET")
        rows: list[_RestTrade] = self._convert(body, list[_RestTrade], "historicalTrades")
        return rows

    async def _newest_id(self) -> int | None:
        body = await self._rest.publicGetTrades({"symbol": self.symbol_id, "limit": 1})
        rows = self._convert(body, list[_RestTrade], "trades")
        return rows[-1].id if rows else None

    @staticmethod
    def _convert(body: Any, kind: Any, what: str) -> Any:
        try:
            return msgspec.convert(body, kind, strict=False)
        except msgspec.ValidationError as e:
            raise BinanceError(f"unexpected {what} answer: {e}") from e

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
        if now - self._book_sent >= self.book_interval_s:
            self._book_sent = now
            await self._emit_book(m.E)
        else:
            self.trailing.hold(self._book_sent + self.book_interval_s - now)

    async def _emit_book(self, ts: int) -> None:
        if self._out is not None:
            self._last_book = self.book.top(self.book_depth, ts)
            await self._out.put(self._last_book)

    def _trailing_book(self) -> BookSnapshot | None:
        """The live book at the end of the interval, unless it shows what was last sent."""
        if self.book.state != "live":
            return None
        book, last = self.book.top(self.book_depth, self._book_ts), self._last_book
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
                snap: _Snapshot = self._convert(body, _Snapshot, "depth")
                if self.book.on_snapshot(snap.lastUpdateId, snap.bids, snap.asks):
                    self.stats.state = "live"
                    self._book_sent = time.monotonic()
                    await self._emit_book(int(time.time() * 1000))
                    log.info("binance: book in sync", market=self.market.id,
                             update_id=snap.lastUpdateId)
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

    # checkpoints -------------------------------------------------------------------------------

    async def _load_checkpoint(self) -> None:
        if self.checkpoints is None:
            return
        try:
            state = await self.checkpoints.get_state(self.checkpoint_key)
        except Exception as e:  # noqa: BLE001 - a store that is down must not stop ingest
            log.warning("binance: checkpoint not readable", market=self.market.id, error=str(e))
            return
        last = (state or {}).get("last_trade_id")
        if isinstance(last, int):
            self.last_id = self._saved_id = last
            log.info("binance: resuming after checkpoint", market=self.market.id, last_id=last)

    async def save_checkpoint(self) -> None:
        await self._save_checkpoint(force=True)

    async def _save_checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        tid = self.processed_tick.trade_id if self.processed_tick is not None else None
        last = int(tid) if tid and tid.isdigit() else None
        if (self.checkpoints is None or last is None or last == self._saved_id
                or (not force and now - self._saved_at < self.checkpoint_every_s)):
            return
        self._saved_at = now
        try:
            await self.checkpoints.set_state(self.checkpoint_key,
                                             {"last_trade_id": last,
                                              "saved_ms": int(time.time() * 1000)})
            self._saved_id = last
        except Exception as e:  # noqa: BLE001 - retried at the next save
            log.warning("binance: checkpoint not saved", market=self.market.id, error=str(e))
