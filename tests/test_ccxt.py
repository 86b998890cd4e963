"""The generic ccxt.pro connector, with ccxt's binance pointed at the local Binance server:
the same faults as the native client, and the same guarantees where ccxt allows them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.binance_server import FakeBinance, Recording, load_recording
from test_binance import (
    N_MESSAGES,
    Running,
    all_received,
    assert_exact,
    assert_same_candles,
    closed_port,
    market_for,
    wait_for,
)

from aetherion.config import MarketConfig
from aetherion.domain import BUY, SELL
from aetherion.ingest.ccxt_pro import CcxtConfig, CcxtConnector


@pytest.fixture(scope="module")
def recording() -> Recording:
    return load_recording("btcusdt", N_MESSAGES)


@pytest.fixture
async def server(recording: Recording) -> AsyncIterator[FakeBinance]:
    srv = await FakeBinance(recording, rate=3000.0, autoplay=False).start()
    yield srv
    await srv.stop()


def ccxt_conn(srv: FakeBinance, **kw: Any) -> CcxtConnector:
    kw.setdefault("watchdog_s", 5.0)
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_cap_s", 0.2)
    return CcxtConnector(CcxtConfig(market_for(srv, "ccxt", exchange="binance"), **kw))


def subscribed(srv: FakeBinance) -> bool:
    streams = {s for c in srv.conns for s in c.streams}
    return {"btcusdt@trade", "btcusdt@depth"} <= {s.split("@100ms")[0] for s in streams}


def assert_book_matches(srv: FakeBinance, run: Running) -> None:
    live = [b for b in run.out.books if b.state == "live"]
    assert live
    last = live[-1]
    assert last.sequence == srv.update_id
    bids, asks = srv.top(20)
    assert list(last.bids) == bids and list(last.asks) == asks


async def test_ccxt_trades_and_book(server: FakeBinance) -> None:
    run = Running(ccxt_conn(server, book_interval_s=0.0))
    await wait_for(lambda: subscribed(server), what="subscribed")
    server.play()
    await all_received(server, run)
    assert_exact(server, run.out.ticks)
    by_id = {d["t"]: d for d in server.published}
    for t in run.out.ticks:
        d = by_id[int(t.trade_id or 0)]
        assert (t.ts, t.price, t.size) == (d["T"], float(d["p"]), float(d["q"]))
        assert t.side == (SELL if d["m"] else BUY)
    await wait_for(lambda: bool(run.out.books) and run.out.books[-1].sequence == server.update_id,
                   what="book caught up")
    assert_book_matches(server, run)
    # No reconnect is asserted here (the native client's test does): in a fresh process ccxt now
    # and then delivers nothing after its first subscription, until the watchdog reconnects and
    # the hole is backfilled; the trades above are exact either way.
    assert run.conn.stats.malformed == 0
    await run.stop()


@pytest.mark.parametrize("keyed", [True, False], ids=["fromId-with-key", "recent-list"])
async def test_ccxt_cut_reconnects_and_backfills(server: FakeBinance, keyed: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    kw: dict[str, Any] = {}
    if keyed:  # ccxt pages historicalTrades by id only with a key; without, the last 1,000
        monkeypatch.setenv("TEST_BINANCE_KEY", "k")
        kw["api_key_env"] = "TEST_BINANCE_KEY"
    market = market_for(server, "ccxt", exchange="binance", **kw)
    # Keyless, a hole must stay within the 1,000 recent trades: ccxt now and then delivers
    # nothing after its first subscription, and at 800 trades/s a 2 s watchdog let 1,600 pass.
    run = Running(CcxtConnector(CcxtConfig(market, watchdog_s=2.0 if keyed else 0.5,
                                           backoff_initial_s=0.05, backoff_cap_s=0.2)))
    await wait_for(lambda: subscribed(server), what="subscribed")
    if not keyed:
        server.rate = 800.0  # ccxt takes about a second to come back: keep the hole < 1,000
    server.play()
    await server.wait_published(600)
    server.cut(refuse_s=0.6 if keyed else 0.05)
    await all_received(server, run)
    st = run.conn.stats
    assert st.reconnects >= 1 and st.backfilled > 0
    assert st.gaps_filled == st.gaps_detected >= 1
    used = server.requests.get("historicalTrades", 0)
    assert used >= 1 if keyed else used == 0
    assert_exact(server, run.out.ticks)
    assert_same_candles(server, run.out.ticks)
    await run.stop()


async def test_ccxt_keyless_hole_beyond_recent_list_is_reported(server: FakeBinance) -> None:
    run = Running(ccxt_conn(server))
    await wait_for(lambda: subscribed(server), what="subscribed")
    server.play()
    await server.wait_published(300)
    server.cut(refuse_s=1.2)  # about 2,500 trades pass: more than the public list holds
    await all_received(server, run)
    st = run.conn.stats
    assert st.gaps_detected >= 1 and st.gaps_filled < st.gaps_detected
    got = [int(t.trade_id or 0) for t in run.out.ticks]
    assert len(got) == len(set(got)) and got == sorted(got)  # a hole, but no duplicates
    await run.stop()


async def test_ccxt_silent_socket_and_malformed_frame(server: FakeBinance) -> None:
    run = Running(ccxt_conn(server, watchdog_s=0.5))
    await wait_for(lambda: subscribed(server), what="subscribed")
    server.rate = 800.0  # keep the hole within the public recent-trades list
    server.play()
    await server.wait_published(400)
    await server.send_raw('{"stream": broken')  # kills ccxt's own receive loop unless guarded
    await server.send_raw('{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT"}}')
    await server.wait_published(700)
    server.silence()
    t0 = time.monotonic()
    await wait_for(lambda: run.conn.stats.reconnects >= 1, timeout=5, what="watchdog reconnect")
    assert time.monotonic() - t0 < 3.0
    await all_received(server, run)
    assert run.conn.stats.malformed >= 2
    assert_exact(server, run.out.ticks)
    assert_same_candles(server, run.out.ticks)
    await run.stop()


async def test_ccxt_depth_gap_shows_resyncing(server: FakeBinance) -> None:
    run = Running(ccxt_conn(server, book_interval_s=0.0))
    conn: CcxtConnector = run.conn  # type: ignore[assignment]
    await wait_for(lambda: conn.stats.state == "live", what="live")
    server.play()
    await server.wait_published(400)
    server.withhold_diffs(1)
    await wait_for(lambda: conn.stats.book_resyncs >= 1, what="ccxt book gap")
    await all_received(server, run)
    await wait_for(lambda: run.out.books[-1].sequence == server.update_id, what="book caught up")
    states = [b.state for b in run.out.books]
    i = states.index("resyncing", states.index("live"))
    assert "live" in states[i:]
    # one withheld diff is one resync and one "resyncing" book, however many diffs ccxt fails
    # on until its new snapshot is in
    assert conn.stats.book_resyncs == 1 and states[i:].count("resyncing") == 1
    assert_book_matches(server, run)
    assert_exact(server, run.out.ticks)
    await run.stop()


class SpinDetected(Exception):
    """watch_order_book called again and again with no turn of the event loop in between."""


class SpinGuarded(CcxtConnector):
    """A loop that calls ccxt's ``watch_order_book`` 1,000 times within one turn of the event
    loop starves everything else (the watchdog included): the guard then raises, so a test
    fails instead of hanging."""

    spun = False

    def _make_exchange(self) -> Any:
        ex = super()._make_exchange()
        real, loop, calls = ex.watch_order_book, asyncio.get_running_loop(), [0]

        def turned() -> None:
            calls[0] = 0

        def watch_order_book(*args: Any, **kw: Any) -> Any:
            if calls[0] == 0:
                loop.call_soon(turned)
            calls[0] += 1
            if calls[0] > 1000:
                self.spun = True
                raise SpinDetected("watch_order_book: 1,000 calls, no turn of the event loop")
            return real(*args, **kw)

        ex.watch_order_book = watch_order_book
        return ex


async def test_ccxt_depth_gap_while_the_book_loop_is_busy_does_not_spin(
        server: FakeBinance) -> None:
    """A gap ccxt finds while no watch_order_book call waits (the book loop busy putting out a
    book) is kept as a rejection, and ccxt keeps the rejected future: every call after raises
    ChecksumError at once, without suspending, until ccxt resolves the book again, which
    needs a resubscribe the loop itself must let out."""
    conn = SpinGuarded(CcxtConfig(market_for(server, "ccxt", exchange="binance"),
                                  watchdog_s=5.0, backoff_initial_s=0.05, backoff_cap_s=0.2,
                                  book_interval_s=0.0))
    gate, parked, emit = asyncio.Event(), asyncio.Event(), conn.emit_book

    async def emit_book(book: Any) -> None:  # a pipeline slow to take a book
        if not gate.is_set():
            parked.set()
            await gate.wait()
        await emit(book)

    conn.emit_book = emit_book  # type: ignore[method-assign]
    gate.set()
    run = Running(conn)
    await wait_for(lambda: conn.stats.state == "live", what="live")
    server.rate = 1000.0  # the stream goes on well after the gap
    server.play()
    await server.wait_published(400)
    gate.clear()
    await wait_for(parked.is_set, what="the book loop held putting out a book")
    server.withhold_diffs(1)
    await wait_for(lambda: conn.ex is not None and any(
        c.rejections for c in conn.ex.clients.values()), what="ccxt keeping the gap's error")
    gate.set()
    await wait_for(lambda: conn.spun or conn.stats.book_resyncs >= 1, what="ccxt book gap")
    await wait_for(lambda: conn.spun or conn.stats.state == "live", what="resynced")
    assert not conn.spun, "the book loop spun without yielding"
    await all_received(server, run)
    await wait_for(lambda: run.out.books[-1].sequence == server.update_id, what="book caught up")
    states = [b.state for b in run.out.books]
    i = states.index("resyncing", states.index("live"))
    assert conn.stats.book_resyncs == 1 and states[i:].count("resyncing") == 1
    assert conn.stats.reconnects == 0
    assert_book_matches(server, run)
    assert_exact(server, run.out.ticks)
    await run.stop()


async def test_ccxt_unknown_exchange_fails_cleanly(server: FakeBinance) -> None:
    conn = CcxtConnector(CcxtConfig(market_for(server, "ccxt", exchange="nosuchexchange")))
    await asyncio.wait_for(conn.run(asyncio.Queue()), 5)
    assert conn.stats.state == "failed"


async def test_ccxt_unknown_symbol_fails_cleanly(server: FakeBinance) -> None:
    market = market_for(server, "ccxt", exchange="binance").model_copy(
        update={"symbol": "NOPE/USDT"})
    conn = CcxtConnector(CcxtConfig(market, backoff_initial_s=0.05, backoff_cap_s=0.1))
    await asyncio.wait_for(conn.run(asyncio.Queue()), 5)
    assert conn.stats.state == "failed" and server.ws_connects == 0


# ---- errors shown by /api/market/status ------------------------------------------------------


@pytest.mark.parametrize(("unreachable", "kind"), [("closed port", "connection refused"),
                                                   ("unresolvable host", "DNS lookup failed")])
async def test_an_unreachable_exchange_shows_its_error_and_counts_attempts(
        unreachable: str, kind: str) -> None:
    host = f"127.0.0.1:{closed_port()}" if unreachable == "closed port" else "nonexistent.invalid"
    market = MarketConfig(id="btcusdt", venue="crypto", connector="ccxt", exchange="binance",
                          symbol="BTC/USDT", ws_url=f"ws://{host}/stream",
                          rest_url=f"http://{host}/api/v3")
    conn = CcxtConnector(CcxtConfig(market, backoff_initial_s=0.01, backoff_cap_s=0.05))
    before = int(time.time() * 1000)
    run = Running(conn)
    await wait_for(lambda: conn.stats.reconnects >= 3, timeout=10, what="three failed attempts")
    assert conn.stats.state in ("connecting", "reconnecting")
    await run.stop()
    st = conn.stats.as_dict()
    assert str(st["last_error"]).startswith(
        f"{kind}: binance GET http://{host}/api/v3/exchangeInfo: "), st["last_error"]
    assert isinstance(st["last_error_at"], int)
    assert before <= st["last_error_at"] <= int(time.time() * 1000)


async def test_an_unknown_symbol_is_the_error_that_stopped_it(server: FakeBinance) -> None:
    market = MarketConfig(id="nope", venue="crypto", connector="ccxt", exchange="binance",
                          symbol="NOPE/USDT", ws_url=server.ws_url, rest_url=server.rest_url)
    conn = CcxtConnector(CcxtConfig(market, backoff_initial_s=0.05, backoff_cap_s=0.1))
    await asyncio.wait_for(conn.run(asyncio.Queue()), 5)
    assert conn.stats.state == "failed" and conn.stats.reconnects == 0
    assert conn.stats.last_error == "BadSymbol: binance does not have market symbol NOPE/USDT"
    assert conn.stats.last_error_at is not None
