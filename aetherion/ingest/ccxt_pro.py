"""Any ccxt exchange: trades and order book through ``ccxt.pro``'s ``watch_trades`` and
``watch_order_book``, behind the same interface as the native clients.

ccxt.pro keeps its own connection, but a frame it cannot parse raises inside its receive
callback and its receive loop stops without a word. So: every client ccxt creates gets a guard
around its frame handler (the frame is counted in ``stats.malformed``, logged truncated and
skipped), every watch call runs under a :class:`~aetherion.ingest.backoff.Watchdog`, and any
failure replaces the whole exchange object (fresh sockets, fresh state) after a back-off.

Backfill after a reconnect (or a restart, from the checkpointed last trade) goes through REST:

- exchanges with consecutive trade ids (Binance family): a hole in the ids is a gap. With an API
  key configured (``api_key_env``) the missing ids are paged with ``fromId`` from
  ``historicalTrades``; without one, ccxt allows only the public recent-trades list (the last
  1,000 trades), so a longer outage leaves a hole that is logged and not counted as filled;
- other exchanges: ``fetch_trades(since=last trade time)``, duplicates dropped by trade id.

``urls`` of the exchange are pointed at ``ws_url`` / ``rest_url`` when the market sets them (a
testnet or a local test server): every websocket URL becomes ``ws_url`` and every REST URL
``rest_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from typing import Any

import ccxt.pro as ccxtpro
import structlog

from aetherion.config import MarketConfig, Settings
from aetherion.domain import BUY, SELL, UNKNOWN_SIDE, BookSnapshot, Tick
from aetherion.ingest.backoff import Backoff, SilentConnection, Watchdog
from aetherion.ingest.base import Checkpoints, Connector, Outbox

__all__ = ["CcxtConnector"]

log = structlog.get_logger(__name__)

RAW_LOG_CHARS = 200
CONSECUTIVE_IDS = frozenset({"binance", "binanceus"})
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}},
    "binanceus": {"fetchMarkets": {"types": ["spot"]}},
}
RETRYABLE: tuple[type[BaseException], ...] = (
    ccxtpro.NetworkError, ccxtpro.ExchangeError, SilentConnection, OSError, TimeoutError,
)


def _point_urls(node: Any, ws_url: str | None, rest_url: str | None) -> Any:
    if isinstance(node, dict):
        return {k: _point_urls(v, ws_url, rest_url) for k, v in node.items()}
    if isinstance(node, str):
        if node.startswith(("ws://", "wss://")) and ws_url:
            return ws_url
        if node.startswith(("http://", "https://")) and rest_url:
            return rest_url
    return node


class CcxtConnector(Connector):
    """One market of any ccxt.pro exchange (``market.exchange``, a ccxt id)."""

    name = "ccxt"

    def __init__(self, market: MarketConfig, settings: Settings,
                 checkpoints: Checkpoints | None = None, *, watchdog_s: float = 15.0,
                 backoff: Backoff | None = None, book_depth: int = 20,
                 book_interval_s: float = 0.25, checkpoint_every_s: float = 1.0) -> None:
        super().__init__(market, settings, checkpoints)
        self.exchange_id = market.exchange or "binance"
        self.backoff = backoff or Backoff()
        self.watchdog_s = watchdog_s
        self.book_depth, self.book_interval_s = book_depth, book_interval_s
        self.checkpoint_every_s = checkpoint_every_s
        self.consecutive = self.exchange_id in CONSECUTIVE_IDS
        self.last_id: int | None = None  # consecutive-id exchanges
        self.last_ts = 0
        self._recent: deque[str] = deque(maxlen=4096)  # ids of recent trades (any exchange)
        self._recent_set: set[str] = set()
        self.duplicates = 0
        self.ex: Any = None
        self._out: Outbox | None = None
        self._book_sent = 0.0
        self._saved: tuple[int | None, int] = (None, 0)
        self._saved_at = 0.0
        self._sessions = 0

    @property
    def checkpoint_key(self) -> str:
        return f"connector:{self.market.id}"

    # lifecycle ---------------------------------------------------------------------------------

    async def run(self, out: Outbox) -> None:
        self._out = out
        if not hasattr(ccxtpro, self.exchange_id):
            self.stats.on_error(f"no such ccxt.pro exchange {self.exchange_id!r}",
                                state="failed")
            log.error("ccxt: no such ccxt.pro exchange", market=self.market.id,
                      exchange=self.exchange_id)
            return
        await self._load_checkpoint()
        try:
            while True:
                try:
                    await self._session()
                except ccxtpro.BadSymbol as e:
                    log.error("ccxt: unknown symbol, giving up", market=self.market.id,
                              error=self.stats.on_error(e, state="failed"))
                    return
                except RETRYABLE as e:
                    log.warning("ccxt: connection lost", market=self.market.id,
                                error=self.stats.on_error(e))
                await self._close()
                await self._save_checkpoint(force=True)
                await self.backoff.wait()
        finally:
            if self.stats.state != "failed":
                self.stats.state = "stopped"
            await self._close()
            await self._save_checkpoint(force=True)

    def _make_exchange(self) -> Any:
        cls = getattr(ccxtpro, self.exchange_id)
        on_bad = self._malformed

        class Guarded(cls):  # type: ignore[misc, valid-type]
            def client(self, url: str) -> Any:
                c = super().client(url)
                if not getattr(c, "_aetherion_guarded", False):
                    handle = c.handle_text_or_binary_message

                    def guarded(data: Any) -> None:
                        try:
                            handle(data)
                        except Exception as e:  # noqa: BLE001 - the frame is counted, skipped
                            on_bad(data, e)

                    c.handle_text_or_binary_message = guarded
                    c._aetherion_guarded = True
                return c

        config: dict[str, Any] = {"enableRateLimit": True, "timeout": 10_000,
                                  "options": dict(EXCHANGE_OPTIONS.get(self.exchange_id, {}))}
        for field, env in (("apiKey", self.market.api_key_env),
                           ("secret", self.market.api_secret_env)):
            if env and os.environ.get(env):
                config[field] = os.environ[env]
        ex = Guarded(config)
        if self.market.ws_url or self.market.rest_url:
            ex.urls["api"] = _point_urls(ex.urls["api"], self.market.ws_url, self.market.rest_url)
        return ex

    async def _close(self) -> None:
        ex, self.ex = self.ex, None
        if ex is not None:
            with contextlib.suppress(Exception):
                await ex.close()

    async def _session(self) -> None:
        self.stats.state = "connecting" if not self._sessions else "reconnecting"
        self.ex = self._make_exchange()
        await self.ex.load_markets()
        self.ex.market(self.market.symbol)  # BadSymbol when unknown
        self._sessions += 1
        self.backoff.connected()
        self.stats.state = "resyncing"
        await self._emit_resyncing()
        trades = asyncio.create_task(self._trades_loop(), name=f"ccxt-trades-{self.market.id}")
        books = asyncio.create_task(self._book_loop(), name=f"ccxt-book-{self.market.id}")
        try:
            done, _ = await asyncio.wait((trades, books), return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            for t in (trades, books):
                t.cancel()
            await asyncio.gather(trades, books, return_exceptions=True)

    def _malformed(self, data: Any, error: BaseException) -> None:
        self.stats.malformed += 1
        text = data if isinstance(data, str) else repr(data)
        log.warning("ccxt: malformed message skipped", market=self.market.id,
                    error=str(error)[:RAW_LOG_CHARS] or type(error).__name__,
                    raw=text[:RAW_LOG_CHARS])

    # trades ------------------------------------------------------------------------------------

    async def _trades_loop(self) -> None:
        dog = Watchdog(self.watchdog_s)
        symbol = self.market.symbol
        first = asyncio.ensure_future(self.ex.watch_trades(symbol))  # subscribe, then catch up
        try:
            await self._catch_up()
        except BaseException:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            raise
        batch = await dog.guard(first)
        while True:
            recv_ns = time.time_ns()
            self.stats.on_messages(len(batch))
            await self._on_trades(batch, recv_ns)
            batch = await dog.guard(self.ex.watch_trades(symbol))

    def _tick(self, t: dict[str, Any], recv_ns: int) -> Tick | None:
        price: Any = t.get("price")
        size: Any = t.get("amount")
        ts, tid = t.get("timestamp"), t.get("id")
        if not (_positive(price) and _positive(size) and type(ts) is int and tid is not None):
            self._malformed(repr(t.get("info", t)), ValueError("trade without price/size/time"))
            return None
        side = t.get("side")
        side = BUY if side == "buy" else SELL if side == "sell" else UNKNOWN_SIDE
        return Tick(self.market.id, ts, float(price), float(size), side, str(tid), recv_ns)

    async def _on_trades(self, trades: list[dict[str, Any]], recv_ns: int) -> None:
        ticks = [tk for t in trades if (tk := self._tick(t, recv_ns)) is not None]
        if self.consecutive and ticks and self.last_id is not None:
            first = self._int_id(ticks[0])
            if first is not None and first > self.last_id + 1:
                await self._backfill()
        await self._emit(ticks)

    async def _emit(self, ticks: list[Tick]) -> None:
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
        if fresh and self._out is not None:
            await self._out.put(fresh)
            await self._save_checkpoint()

    @staticmethod
    def _int_id(t: Tick) -> int | None:
        tid = t.trade_id or ""
        return int(tid) if tid.isdigit() else None

    async def _catch_up(self) -> None:
        if self.last_id is not None or self.last_ts:
            await self._backfill()

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
        await self._emit(ticks)
        self.stats.backfilled = before + n_before
        if not n_before:
            return
        self.stats.gaps_detected += 1
        contiguous = last_id is None or all(
            self._int_id(t) == last_id + 1 + i for i, t in enumerate(ticks))
        if contiguous:
            self.stats.gaps_filled += 1
        log.info("ccxt: backfilled", market=self.market.id, trades=n_before, filled=contiguous)

    async def _fetch_by_id(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        next_id = (self.last_id or 0) + 1
        while True:
            page = await self.ex.fetch_trades(self.market.symbol, None, 1000, {
                "fetchTradesMethod": "publicGetHistoricalTrades", "fromId": next_id})
            out.extend(page)
            if len(page) < 1000:
                return out
            next_id = int(page[-1]["id"]) + 1

    async def _fetch_recent(self) -> list[dict[str, Any]]:
        params = {"fetchTradesMethod": "publicGetTrades"} if self.consecutive else {}
        since = None if self.consecutive else self.last_ts or None
        page: list[dict[str, Any]] = await self.ex.fetch_trades(self.market.symbol, since, 1000,
                                                                params)
        return page

    # order book --------------------------------------------------------------------------------

    async def _book_loop(self) -> None:
        dog = Watchdog(self.watchdog_s)
        while True:
            try:
                ob = await dog.guard(self.ex.watch_order_book(self.market.symbol))
            except ccxtpro.ChecksumError as e:  # a sequence gap: ccxt dropped its book
                self.stats.book_resyncs += 1
                self.stats.state = "resyncing"
                log.warning("ccxt: order book gap, resyncing", market=self.market.id,
                            error=str(e)[:RAW_LOG_CHARS])
                await self._emit_resyncing()
                continue
            if self.stats.state != "live":
                self.stats.state = "live"
                self._book_sent = 0.0
            now = time.monotonic()
            if now - self._book_sent >= self.book_interval_s:
                self._book_sent = now
                await self._emit_book(ob)

    async def _emit_book(self, ob: Any) -> None:
        n = self.book_depth
        snap = BookSnapshot(
            self.market.id, int(ob.get("timestamp") or time.time() * 1000),
            tuple((float(p), float(q)) for p, q, *_ in ob["bids"][:n]),
            tuple((float(p), float(q)) for p, q, *_ in ob["asks"][:n]),
            ob.get("nonce"), "live")
        if self._out is not None:
            await self._out.put(snap)

    async def _emit_resyncing(self) -> None:
        if self._out is not None:
            await self._out.put(BookSnapshot(self.market.id, int(time.time() * 1000), (), (),
                                             None, "resyncing"))

    # checkpoints -------------------------------------------------------------------------------

    async def _load_checkpoint(self) -> None:
        if self.checkpoints is None:
            return
        try:
            state = await self.checkpoints.get_state(self.checkpoint_key) or {}
        except Exception as e:  # noqa: BLE001 - a store that is down must not stop ingest
            log.warning("ccxt: checkpoint not readable", market=self.market.id, error=str(e))
            return
        if isinstance(state.get("last_trade_id"), int):
            self.last_id = state["last_trade_id"]
        if isinstance(state.get("last_ts"), int):
            self.last_ts = state["last_ts"]
        self._saved = (self.last_id, self.last_ts)

    async def save_checkpoint(self) -> None:
        await self._save_checkpoint(force=True)

    async def _save_checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        done = self.processed_tick
        if done is None:
            return
        cur = (self._int_id(done) if self.consecutive else None, done.ts)
        if (self.checkpoints is None or cur == self._saved
                or (not force and now - self._saved_at < self.checkpoint_every_s)):
            return
        self._saved_at = now
        try:
            await self.checkpoints.set_state(self.checkpoint_key, {
                "last_trade_id": cur[0], "last_ts": cur[1],
                "saved_ms": int(time.time() * 1000)})
            self._saved = cur
        except Exception as e:  # noqa: BLE001 - retried at the next save
            log.warning("ccxt: checkpoint not saved", market=self.market.id, error=str(e))


def _positive(x: Any) -> bool:
    """A finite number above 0 (not a bool, which Python counts as an int)."""
    return type(x) in (int, float) and math.isfinite(x) and x > 0
