"""Any ccxt exchange: trades and order book through ``ccxt.pro``'s ``watch_trades`` and
``watch_order_book``, behind the same interface as the native clients.

The session loop is the shared one (:mod:`aetherion.ingest.live`); a session is one exchange
object: ``connect`` builds it and loads its markets, ``catch_up`` subscribes to the book and the
trades and backfills, ``read`` watches both, each wait under the watchdog. ccxt.pro keeps its own
connection, but a frame it cannot parse raises inside its receive callback and its receive loop
stops without a word. So: every client ccxt creates gets a guard around its frame handler (the
frame is counted in ``stats.malformed``, logged truncated and skipped), every watch call is
watched, and any failure replaces the whole exchange object (fresh sockets, fresh state) after a
back-off. ccxt's unified trades are validated into :class:`CcxtTrade` before they become ticks.

Backfill after a reconnect (or a restart, from the checkpointed last trade) goes through REST:

- exchanges with consecutive trade ids (Binance family): a hole in the ids is a gap. With an API
  key configured (``api_key_env``) the missing ids are paged with ``fromId`` from
  ``historicalTrades``; without one, ccxt allows only the public recent-trades list (the last
  1,000 trades), so a longer outage leaves a hole that is logged and not counted as filled;
- other exchanges: ``fetch_trades(since=last trade time)``, duplicates dropped by trade id.

``urls`` of the exchange are pointed at ``ws_url`` / ``rest_url`` when the market sets them (a
testnet or a local test server): every websocket URL becomes ``ws_url`` and every REST URL
``rest_url``.

Errors (besides those of the loop)::

    no such ccxt.pro exchange    stop before connecting
    BadSymbol                    stop
    ccxt NetworkError / ExchangeError (their text names the URL): retry
"""


from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Required, TypedDict

import ccxt.pro as ccxtpro
import msgspec
import structlog

from aetherion.domain import BUY, SELL, UNKNOWN_SIDE, BookSnapshot, Tick
from aetherion.ingest.backoff import SilentConnection
from aetherion.ingest.base import Checkpoints, ConnectorConfig
from aetherion.ingest.checkpoint import Position
from aetherion.ingest.live import Failure, LiveConfig, LiveConnector

__all__ = ["CcxtConfig", "CcxtConnector", "CcxtTrade", "parse_to_book"]

log = structlog.get_logger(__name__)

RAW_LOG_CHARS = 200
BOOK_GAP_PAUSE_S = 0.05  # the wait when ccxt raises ChecksumError again before a book
CONSECUTIVE_IDS = frozenset({"binance", "binanceus"})
EXCHANGE_OPTIONS: dict[str, dict[str, object]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}},
    "binanceus": {"fetchMarkets": {"types": ["spot"]}},
}

#: A finite number above 0 (not a bool).
Positive = Annotated[float, msgspec.Meta(gt=0, le=sys.float_info.max)]
#: one of ccxt's unified trades, not yet validated
Row = dict[str, object]


class CcxtBook(TypedDict, total=False):
    """ccxt's unified order book, the keys read here (levels ``[price, amount, ...]``)."""

    bids: Required[Sequence[Sequence[float]]]
    asks: Required[Sequence[Sequence[float]]]
    timestamp: float | None
    nonce: int | None


class CcxtTrade(msgspec.Struct, frozen=True):
    """ccxt's unified trade, as far as a tick needs it (other keys are not read)."""

    price: Positive
    amount: Positive
    timestamp: int
    id: str | int
    side: object = None

    def parse_to_tick(self, market_id: str, recv_ns: int) -> Tick:
        side = BUY if self.side == "buy" else SELL if self.side == "sell" else UNKNOWN_SIDE
        return Tick(market_id, self.timestamp, self.price, self.amount, side, str(self.id),
                    recv_ns)


def parse_to_book(ob: CcxtBook, market_id: str, depth: int) -> BookSnapshot:
    """The top ``depth`` levels a side of ccxt's order book."""
    return BookSnapshot(
        market_id, int(ob.get("timestamp") or time.time() * 1000),
        tuple((float(p), float(q)) for p, q, *_ in ob["bids"][:depth]),
        tuple((float(p), float(q)) for p, q, *_ in ob["asks"][:depth]),
        ob.get("nonce"), "live")


def _point_urls(node: object, ws_url: str | None, rest_url: str | None) -> object:
    if isinstance(node, dict):
        return {k: _point_urls(v, ws_url, rest_url) for k, v in node.items()}
    if isinstance(node, str):
        if node.startswith(("ws://", "wss://")) and ws_url:
            return ws_url
        if node.startswith(("http://", "https://")) and rest_url:
            return rest_url
    return node


@dataclass(frozen=True, slots=True)
class CcxtConfig(LiveConfig):
    """``book_depth`` levels a side go out at most every ``book_interval_s``."""

    watchdog_s: float = 15.0
    book_depth: int = 20
    book_interval_s: float = 0.25


class CcxtConnector(LiveConnector):
    """One market of any ccxt.pro exchange (``market.exchange``, a ccxt id)."""

    name = "ccxt"
    config: CcxtConfig
    config_type: ClassVar[type[ConnectorConfig]] = CcxtConfig
    checkpoint_prefix = "connector:"

    def __init__(self, config: CcxtConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        self.exchange_id = self.market.exchange or "binance"
        self.consecutive = self.exchange_id in CONSECUTIVE_IDS
        self.last_id: int | None = None  # consecutive-id exchanges
        self.last_ts = 0
        self._recent: deque[str] = deque(maxlen=4096)  # ids of recent trades (any exchange)
        self._recent_set: set[str] = set()
        self.duplicates = 0
        self.ex: Any = None  # a ccxt.pro exchange (ccxt is untyped)
        self._book_sent = 0.0
        self._trades: asyncio.Future[list[Row]] | None = None  # the first watch_trades call
        self._book_task: asyncio.Task[None] | None = None

    # the session -------------------------------------------------------------------------------

    def problem(self) -> str | None:
        if not hasattr(ccxtpro, self.exchange_id):
            return f"no such ccxt.pro exchange {self.exchange_id!r}"
        return super().problem()

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        self.ex = self._make_exchange()
        try:
            await self.ex.load_markets()
            self.ex.market(self.market.symbol)  # BadSymbol when unknown
            yield
        finally:
            pending = [f for f in (self._trades, self._book_task) if f is not None]
            self._trades = self._book_task = None
            for f in pending:
                f.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            ex, self.ex = self.ex, None
            with contextlib.suppress(Exception):
                await ex.close()

    async def catch_up(self) -> None:
        """Trades subscribed first, then backfilled (nothing falls between what is fetched and
        what streams); the book watched meanwhile (``resyncing`` until it comes)."""
        self.stats.state = "resyncing"
        await self._emit_resyncing()
        self._trades = asyncio.ensure_future(self.ex.watch_trades(self.market.symbol))
        self._book_task = asyncio.create_task(self._book_loop(),
                                              name=f"ccxt-book-{self.market.id}")
        if self.last_id is not None or self.last_ts:
            await self._backfill()

    async def read(self) -> None:
        first, book = self._trades, self._book_task
        if first is None or book is None:
            raise ConnectionError("not connected")
        trades = asyncio.create_task(self._trades_loop(first),
                                     name=f"ccxt-trades-{self.market.id}")
        try:
            done, _ = await asyncio.wait((trades, book), return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            trades.cancel()
            await asyncio.gather(trades, return_exceptions=True)

    def classify(self, error: Exception) -> Failure | None:
        if isinstance(error, ccxtpro.BadSymbol):
            return Failure(error, stop=True)
        if isinstance(error, ccxtpro.NetworkError | ccxtpro.ExchangeError):
            return Failure(error)  # ccxt's messages name their own URL
        return super().classify(error)

    def _make_exchange(self) -> Any:  # a ccxt.pro exchange; ccxt is untyped
        cls = getattr(ccxtpro, self.exchange_id)
        on_bad = self._malformed

        class Guarded(cls):  # type: ignore[misc, valid-type]
            def client(self, url: str) -> Any:
                c = super().client(url)
                if not getattr(c, "_aetherion_guarded", False):
                    handle, future = c.handle_text_or_binary_message, c.future

                    def guarded(data: object) -> None:
                        try:
                            handle(data)
                        except Exception as e:  # the frame is counted and skipped
                            on_bad(data, e)

                    def fresh_future(message_hash: str) -> Any:
                        # An error for a hash no call waits on (a book gap found while the
                        # book loop is busy) is kept and given to the next call's future, but
                        # ccxt leaves that rejected future in place: every later call gets it
                        # at once, never suspending, until a resolve for the hash, which the
                        # starved loop never lets in. Handed out once, it goes.
                        f = future(message_hash)
                        if f.done() and c.futures.get(message_hash) is f:
                            del c.futures[message_hash]
                        return f

                    c.handle_text_or_binary_message = guarded
                    c.future = fresh_future
                    c._aetherion_guarded = True
                return c

        config: dict[str, object] = {"enableRateLimit": True, "timeout": 10_000,
                                     "options": dict(EXCHANGE_OPTIONS.get(self.exchange_id, {}))}
        for field, env in (("apiKey", self.market.api_key_env),
                           ("secret", self.market.api_secret_env)):
            if env and os.environ.get(env):
                config[field] = os.environ[env]
        ex = Guarded(config)
        if self.market.ws_url or self.market.rest_url:
            ex.urls["api"] = _point_urls(ex.urls["api"], self.market.ws_url, self.market.rest_url)
        return ex

    def _malformed(self, data: object, error: BaseException) -> None:
        self.stats.malformed += 1
        text = data if isinstance(data, str) else repr(data)
        log.warning("ccxt: malformed message skipped", market=self.market.id,
                    error=str(error)[:RAW_LOG_CHARS] or type(error).__name__,
                    raw=text[:RAW_LOG_CHARS])

    # checkpoint --------------------------------------------------------------------------------

    def position(self) -> Position | None:
        done = self.processed_tick
        if done is None:
            return None
        return {"last_trade_id": self._int_id(done) if self.consecutive else None,
                "last_ts": done.ts}

    def restore(self, state: Position) -> None:
        if isinstance(state.get("last_trade_id"), int):
            self.last_id = state["last_trade_id"]
        if isinstance(state.get("last_ts"), int):
            self.last_ts = state["last_ts"]

    # trades ------------------------------------------------------------------------------------

    async def _trades_loop(self, first: asyncio.Future[list[Row]]) -> None:
        watch, symbol = self.watchdog.next, self.market.symbol
        batch = await watch(lambda: first)
        while True:
            recv_ns = time.time_ns()
            self.stats.on_messages(len(batch))
            await self._on_trades(batch, recv_ns)
            batch = await watch(lambda: self.ex.watch_trades(symbol))

    def _tick(self, t: object, recv_ns: int) -> Tick | None:
        try:
            return msgspec.convert(t, CcxtTrade).parse_to_tick(self.market.id, recv_ns)
        except msgspec.ValidationError as e:
            raw = t.get("info", t) if isinstance(t, dict) else t
            self._malformed(repr(raw), e)
            return None

    async def _on_trades(self, trades: list[Row], recv_ns: int) -> None:
        ticks = [tk for t in trades if (tk := self._tick(t, recv_ns)) is not None]
        if self.consecutive and ticks and self.last_id is not None:
            # Any hole among the new ids, not just before the batch's first trade: a batch can
            # begin with trades already put out (ccxt's cache) and skip some after them.
            new = sorted(n for t in ticks if (n := self._int_id(t)) is not None
                         and n > self.last_id)
            if new and (new[0] > self.last_id + 1 or new[-1] - new[0] + 1 > len(set(new))):
                await self._backfill()
        await self._emit_fresh(ticks)

    async def _emit_fresh(self, ticks: list[Tick]) -> None:
        """Put out the ticks not put out before (by id)."""
        fresh: list[Tick] = []
        for t in ticks:
            tid = t.trade_id or ""
            n = self._int_id(t) if self.consecutive else None
            if (n is not None and self.last_id is not None and n <= self.last_id) \
                    or tid in self._recent_set:
                self.duplicates += 1
                continue
            if len(self._recent) == self._recent.maxlen:
                self._recent_set.discard(self._recent[0])
            self._recent.append(tid)
            self._recent_set.add(tid)
            if n is not None:
                self.last_id = n
            self.last_ts = max(self.last_ts, t.ts)
            fresh.append(t)
        if fresh:
            await self.emit(fresh)
            await self.checkpointer.save()

    @staticmethod
    def _int_id(t: Tick) -> int | None:
        tid = t.trade_id or ""
        return int(tid) if tid.isdigit() else None

    async def _backfill(self) -> None:
        """Fetch what was missed since the last trade put out; count the gap."""
        before, last_id = self.stats.backfilled, self.last_id
        rows = await (self._fetch_by_id() if self.consecutive and self.ex.apiKey
                      else self._fetch_recent())
        ticks = sorted((tk for r in rows if (tk := self._tick(r, 0)) is not None),
                       key=lambda t: (self._int_id(t) or 0, t.ts) if self.consecutive
                       else (t.ts, t.trade_id or ""))
        if last_id is not None:
            ticks = [t for t in ticks if (self._int_id(t) or 0) > last_id]
            first = self._int_id(ticks[0]) if ticks else None
            if first is not None and first > last_id + 1:
                log.error("ccxt: hole older than the exchange's public trade list",
                          market=self.market.id, first_missing=last_id + 1, first_found=first)
        n_before = len(ticks)
        await self._emit_fresh(ticks)
        self.stats.backfilled = before + n_before
        if not n_before:
            return
        self.stats.gaps_detected += 1
        contiguous = last_id is None or all(
            self._int_id(t) == last_id + 1 + i for i, t in enumerate(ticks))
        if contiguous:
            self.stats.gaps_filled += 1
        log.info("ccxt: backfilled", market=self.market.id, trades=n_before, filled=contiguous)

    async def _fetch_by_id(self) -> list[Row]:
        out: list[Row] = []
        next_id = (self.last_id or 0) + 1
        while True:
            page = await self.ex.fetch_trades(self.market.symbol, None, 1000, {
                "fetchTradesMethod": "publicGetHistoricalTrades", "fromId": next_id})
            out.extend(page)
            if len(page) < 1000:
                return out
            next_id = int(page[-1]["id"]) + 1

    async def _fetch_recent(self) -> list[Row]:
        params = {"fetchTradesMethod": "publicGetTrades"} if self.consecutive else {}
        since = None if self.consecutive else self.last_ts or None
        page: list[Row] = await self.ex.fetch_trades(self.market.symbol, since, 1000, params)
        return page

    # order book --------------------------------------------------------------------------------

    async def _book_loop(self) -> None:
        watch, symbol = self.watchdog.next, self.market.symbol
        gap_since: float | None = None  # the first ChecksumError since the last book
        while True:
            try:
                ob = await watch(lambda: self.ex.watch_order_book(symbol))
            except ccxtpro.ChecksumError as e:  # a sequence gap: ccxt dropped its book
                # ccxt raises again for every diff until its new snapshot is in: one resync,
                # one warning, one "resyncing" book (seen: 251 of each in a second, and the
                # trades starved until the watchdog dropped the connection)
                if self.stats.state != "resyncing":
                    self.stats.book_resyncs += 1
                    self.stats.state = "resyncing"
                    log.warning("ccxt: order book gap, resyncing", market=self.market.id,
                                error=str(e)[:RAW_LOG_CHARS])
                    await self._emit_resyncing()
                # ccxt can raise without suspending (an error it kept, see fresh_future): the
                # loop always yields, waits when ccxt raises again before a book, and
                # reconnects when that goes on for the watchdog's timeout
                now = time.monotonic()
                if gap_since is None:
                    gap_since = now
                    await asyncio.sleep(0)
                elif now - gap_since < self.watchdog.timeout_s:
                    await asyncio.sleep(BOOK_GAP_PAUSE_S)
                else:
                    raise SilentConnection(f"no order book for {self.watchdog.timeout_s:g} s "
                                           "after a gap") from e
                continue
            gap_since = None
            if self.stats.state != "live":
                self.stats.state = "live"
                self._book_sent = 0.0
            now = time.monotonic()
            if now - self._book_sent >= self.config.book_interval_s:
                self._book_sent = now
                await self.emit_book(parse_to_book(ob, self.market.id, self.config.book_depth))
            await asyncio.sleep(0)  # a book ccxt hands back at once must not starve the loop

    async def _emit_resyncing(self) -> None:
        await self.emit_book(BookSnapshot(self.market.id, int(time.time() * 1000), (), (), None,
                                          "resyncing"))
