"""Native Binance connector against a local Binance server fed with the real recording.

Every test checks the guarantees end to end: the trade ids put out are exactly the ones the
server published (none missing, none twice), candles built from them equal candles built from
what the server published, and the local book equals the server's book.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.binance_server import FakeBinance, Recording, load_recording
from structlog.testing import capture_logs

from aetherion.config import MarketConfig
from aetherion.domain import BUY, SELL, BookSnapshot, Tick
from aetherion.features.candles import CandleEngine
from aetherion.ingest.base import Connector, Outbox
from aetherion.ingest.binance import BinanceConfig, BinanceConnector
from aetherion.storage.state import StateStore

N_MESSAGES = 2400  # about 1,750 trades and 650 depth diffs


class Collector:
    """Drains a connector's outbox the way the pipeline does (and says what it has taken);
    ``hold`` stops taking, as a pipeline busy elsewhere would."""

    def __init__(self, conn: Connector) -> None:
        self.conn = conn
        self.queue: Outbox = asyncio.Queue(1024)
        self.ticks: list[Tick] = []
        self.books: list[BookSnapshot] = []
        self.hold = asyncio.Event()
        self.task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while True:
            item = await self.queue.get()
            if isinstance(item, BookSnapshot):
                self.books.append(item)
            elif item:
                self.ticks.extend(item)
                self.conn.processed(item[-1])
            if self.hold.is_set():
                return

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def recording() -> Recording:
    return load_recording("btcusdt", N_MESSAGES)


@pytest.fixture
async def server(recording: Recording) -> AsyncIterator[FakeBinance]:
    srv = await FakeBinance(recording, rate=3000.0, autoplay=False).start()
    yield srv
    await srv.stop()


def market_for(srv: FakeBinance, connector: str = "binance", **kw: Any) -> MarketConfig:
    return MarketConfig(id="btcusdt", venue="crypto", connector=connector,  # type: ignore[arg-type]
                        symbol="BTC/USDT", ws_url=srv.ws_url, rest_url=srv.rest_url, **kw)


def native(srv: FakeBinance, checkpoints: Any = None, **kw: Any) -> BinanceConnector:
    kw.setdefault("watchdog_s", 2.0)
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_cap_s", 0.2)
    return BinanceConnector(BinanceConfig(market_for(srv), **kw), checkpoints)


class Running:
    def __init__(self, conn: Connector) -> None:
        self.conn = conn
        self.out = Collector(conn)
        self.task = asyncio.create_task(conn.run(self.out.queue))

    async def stop(self) -> None:
        """As the server stops: the connector, then the pipeline, then the final checkpoint."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await asyncio.sleep(0)
        await self.out.stop()
        await self.conn.save_checkpoint()


def ids(ticks: list[Tick]) -> list[int]:
    return [int(t.trade_id or -1) for t in ticks]


async def all_received(srv: FakeBinance, run: Running) -> None:
    await srv.finished()
    last = srv.published[-1]["t"]
    await wait_for(lambda: bool(run.out.ticks) and ids(run.out.ticks)[-1] >= last,
                   what="the last published trade")


def assert_exact(srv: FakeBinance, ticks: list[Tick]) -> None:
    got = ids(ticks)
    want = [d["t"] for d in srv.published]
    assert len(got) == len(set(got)), "duplicate trade ids"
    assert got == want[want.index(got[0]):], "missing or out-of-order trade ids"


def assert_same_candles(srv: FakeBinance, ticks: list[Tick]) -> None:
    def bars(ts: list[Tick]) -> list[tuple[int, float, int, float]]:
        eng = CandleEngine("btcusdt", ["1s", "1m"], 0)
        out = eng.on_ticks(ts) + eng.flush()
        return [(b.open_time, round(b.volume, 8), b.trade_count, round(b.buy_volume, 8))
                for b in out if b.timeframe == "1s"]

    first = int(ticks[0].trade_id or 0)
    published = [Tick("btcusdt", d["T"], float(d["p"]), float(d["q"]),
                      SELL if d["m"] else BUY, str(d["t"])) for d in srv.published
                 if d["t"] >= first]
    assert bars(sorted(ticks, key=lambda t: int(t.trade_id or 0))) == bars(published)


def assert_book_equal(srv: FakeBinance, conn: BinanceConnector, depth: int = 100) -> None:
    assert conn.book.state == "live"
    assert conn.book.update_id == srv.update_id
    bids, asks = srv.top(depth)
    mine = conn.book.top(depth, 0)
    assert list(mine.bids) == bids and list(mine.asks) == asks


async def test_trades_normalized_from_recording(server: FakeBinance) -> None:
    run = Running(native(server))
    await wait_for(lambda: server.conns != [] and run.conn.stats.state == "live", what="live")
    server.play()
    await all_received(server, run)
    ticks = run.out.ticks
    assert_exact(server, ticks)
    by_id = {d["t"]: d for d in server.published}
    for t in ticks:
        d = by_id[int(t.trade_id or 0)]
        assert (t.ts, t.price, t.size) == (d["T"], float(d["p"]), float(d["q"]))
        assert t.side == (SELL if d["m"] else BUY)
        assert t.recv_ns > 0 and t.market == "btcusdt"
    assert {t.side for t in ticks} == {BUY, SELL}
    await wait_for(lambda: run.conn.book.update_id == server.update_id, what="book caught up")
    assert_book_equal(server, run.conn)  # type: ignore[arg-type]
    live = [b for b in run.out.books if b.state == "live"]
    assert live and all(len(b.bids) == 20 and b.bids[0][0] < b.asks[0][0] for b in live)
    st = run.conn.stats
    assert st.malformed == 0 and st.reconnects == 0 and st.gaps_detected == 0
    assert st.messages >= len(ticks)
    await run.stop()


async def test_a_burst_of_diffs_ending_inside_the_interval_still_shows_the_last_book(
    server: FakeBinance,
) -> None:
    """The recorded trades and diffs as fast as they come, then silence: the newest book goes
    out when its throttle interval ends (within one interval, plus a little), not at the next
    diff, which in a quiet market may be long in coming."""
    run = Running(native(server))
    conn: BinanceConnector = run.conn  # type: ignore[assignment]
    await wait_for(lambda: server.conns != [] and conn.stats.state == "live", what="live")
    server.play()
    await server.finished()
    await wait_for(lambda: conn.book.update_id == server.update_id, what="book caught up")
    quiet_since = conn.stats.last_message_mono
    assert quiet_since is not None
    bids, asks = server.top(conn.config.book_depth)

    def shows_last() -> bool:
        live = [b for b in run.out.books if b.state == "live"]
        return bool(live) and (list(live[-1].bids), list(live[-1].asks)) == (bids, asks)

    slack = 0.2  # "plus a little": scheduling on a busy machine
    try:
        await wait_for(shows_last, max(0.0, quiet_since + conn.config.book_interval_s + slack
                                       - time.monotonic()))
    except AssertionError:
        pytest.fail(f"{conn.config.book_interval_s} s (+{slack} s) after the last diff the newest "
                    f"book put out was update {run.out.books[-1].sequence}, "
                    f"not {server.update_id}")
    assert run.out.books[-1].sequence == server.update_id and conn.trailing.sent >= 1
    await run.stop()
    assert not any(t.get_name() == "book-trailing-btcusdt" for t in asyncio.all_tasks())


async def test_cut_and_refused_reconnect_backfills_exactly(server: FakeBinance) -> None:
    run = Running(native(server))
    await wait_for(lambda: server.conns != [], what="connected")
    server.play()
    await server.wait_published(600)
    server.cut(refuse_s=0.6, refuse_at_least=1)  # no close frame; reconnects refused a while
    await server.wait_published(1200)
    await wait_for(lambda: server.refused >= 1, what="a refused reconnect")  # however late
    await all_received(server, run)
    st = run.conn.stats
    assert st.reconnects >= 1 and st.gaps_detected >= 1
    assert st.gaps_filled == st.gaps_detected and st.backfilled > 0
    assert_exact(server, run.out.ticks)
    assert_same_candles(server, run.out.ticks)
    await wait_for(lambda: run.conn.book.update_id == server.update_id, what="book caught up")
    assert_book_equal(server, run.conn)  # type: ignore[arg-type]
    await run.stop()


async def test_silent_socket_is_detected_by_the_watchdog(server: FakeBinance) -> None:
    run = Running(native(server, watchdog_s=0.4))
    await wait_for(lambda: server.conns != [], what="connected")
    server.play()
    await server.wait_published(500)
    server.silence()  # the socket stays open, pings are answered, no data comes
    t0 = time.monotonic()
    await wait_for(lambda: run.conn.stats.reconnects >= 1, timeout=5, what="watchdog reconnect")
    assert time.monotonic() - t0 < 2.5
    assert run.conn.watchdog.fired >= 1  # type: ignore[attr-defined]
    await all_received(server, run)
    assert_exact(server, run.out.ticks)
    assert_same_candles(server, run.out.ticks)
    assert run.conn.stats.gaps_filled == run.conn.stats.gaps_detected >= 1
    await run.stop()


async def test_depth_gap_resyncs_the_book(server: FakeBinance) -> None:
    run = Running(native(server))
    conn: BinanceConnector = run.conn  # type: ignore[assignment]
    await wait_for(lambda: conn.stats.state == "live", what="live")
    server.play()
    await server.wait_published(400)
    with capture_logs() as logs:
        server.withhold_diffs(1)
        await wait_for(lambda: conn.stats.book_resyncs >= 1, what="resync")
    # the warning names the update the book expected next (the one withheld), not 1
    gap = [e for e in logs if e["event"] == "binance: depth sequence gap, resyncing the book"]
    assert len(gap) == 1
    diffs = [d for s, d in server.rec.messages if "@depth" in s]
    assert [d["u"] + 1 for d in diffs if d["U"] == gap[0]["expected"]] == [gap[0]["first"]]
    await all_received(server, run)
    await wait_for(lambda: conn.book.update_id == server.update_id, what="book caught up")
    assert server.withheld == 1 and conn.stats.book_resyncs == 1
    assert_book_equal(server, conn)
    states = [b.state for b in run.out.books]
    i = states.index("live")
    assert "resyncing" in states[i:], "the resync was not shown"
    j = states.index("resyncing", i)
    assert all(not b.bids and not b.asks for b in run.out.books if b.state == "resyncing")
    assert "live" in states[j:] and conn.stats.state == "live"
    assert server.requests["depth"] >= 2
    assert conn.stats.reconnects == 0  # trades kept flowing
    assert_exact(server, run.out.ticks)
    await run.stop()


async def test_malformed_frames_are_counted_and_skipped(server: FakeBinance) -> None:
    run = Running(native(server))
    await wait_for(lambda: server.conns != [], what="connected")
    server.play()
    await server.wait_published(300)
    bad = ["not json at all", '{"stream":"btcusdt@trade","data":{"e":"trade","t":"x"}}',
           '{"result":null,"id":1}', '{"stream":"btcusdt@trade","data":{"e":"kline"}}',
           '{"stream":"ethusdt@trade","data":{"e":"trade","E":1,"s":"ETHUSDT","t":1,'
           '"p":"1","q":"1","T":1,"m":true,"M":true}}', "[1, 2"]
    for text in bad:
        await server.send_raw(text)
    await all_received(server, run)
    assert run.conn.stats.malformed == len(bad)
    assert run.conn.stats.reconnects == 0
    assert_exact(server, run.out.ticks)
    await run.stop()


async def test_restart_resumes_from_checkpoint(server: FakeBinance, tmp_path: Path) -> None:
    store = await StateStore.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        first = Running(native(server, store, checkpoint_every_s=0.0))
        await wait_for(lambda: server.conns != [], what="connected")
        server.play()
        await server.wait_published(700)
        await first.stop()
        saved = await store.get_state("connector:btcusdt")
        assert saved is not None and saved["last_trade_id"] == ids(first.out.ticks)[-1]
        await server.wait_published(1500)  # trades go on while we are down
        second = Running(native(server, store))
        await all_received(server, second)
        both = first.out.ticks + second.out.ticks
        assert_exact(server, both)
        assert_same_candles(server, both)
        assert second.conn.stats.backfilled > 0 and second.conn.stats.gaps_filled >= 1
        await second.stop()
    finally:
        await store.close()


async def test_checkpoint_is_what_the_pipeline_took_not_what_was_queued(
        server: FakeBinance, tmp_path: Path) -> None:
    """Trades still queued when the process stops are not checkpointed: the restart fetches
    them again, so nothing the pipeline never saw is skipped."""
    store = await StateStore.open(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    try:
        first = Running(native(server, store, checkpoint_every_s=0.0))
        await wait_for(lambda: server.conns != [], what="connected")
        server.play()
        await server.wait_published(300)
        first.out.hold.set()  # the pipeline takes one more batch, then nothing
        await server.wait_published(900)
        await wait_for(lambda: first.out.queue.qsize() > 0, what="trades left in the queue")
        await first.stop()
        taken = ids(first.out.ticks)[-1]
        saved = await store.get_state("connector:btcusdt")
        assert saved is not None and saved["last_trade_id"] == taken
        assert first.conn.last_id is not None and first.conn.last_id > taken  # queued, untaken
        second = Running(native(server, store))
        await all_received(server, second)
        assert_exact(server, first.out.ticks + second.out.ticks)
        await second.stop()
    finally:
        await store.close()


async def test_unknown_symbol_fails_cleanly(server: FakeBinance) -> None:
    market = MarketConfig(id="nope", venue="crypto", connector="binance", symbol="NOPE/USDT",
                          ws_url=server.ws_url, rest_url=server.rest_url)
    conn = BinanceConnector(BinanceConfig(market, backoff_initial_s=0.05, backoff_cap_s=0.1))
    await asyncio.wait_for(conn.run(asyncio.Queue()), 5)
    assert conn.stats.state == "failed" and server.ws_connects == 0


# ---- errors shown by /api/market/status ------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("unreachable", "kind"), [("closed port", "connection refused"),
                                                   ("unresolvable host", "DNS lookup failed")])
async def test_an_unreachable_exchange_shows_its_error_and_counts_attempts(
        unreachable: str, kind: str) -> None:
    """A market that never connected: the status says why, since when, and how often it tried."""
    host = f"127.0.0.1:{closed_port()}" if unreachable == "closed port" else "nonexistent.invalid"
    market = MarketConfig(id="btcusdt", venue="crypto", connector="binance", symbol="BTC/USDT",
                          ws_url=f"ws://{host}/stream", rest_url=f"http://{host}/api/v3")
    conn = BinanceConnector(BinanceConfig(market, backoff_initial_s=0.01, backoff_cap_s=0.05))
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


async def test_a_refused_websocket_shows_the_http_status_and_keeps_it_once_live(
        server: FakeBinance) -> None:
    server.cut(refuse_s=1.0)  # upgrades answered with HTTP 503 for a second
    run = Running(native(server))
    st = run.conn.stats
    # the server counts a refusal before the client has read it: wait on the client's count
    await wait_for(lambda: st.reconnects >= 2 and st.state != "live", what="refused upgrades")
    assert server.refused >= 2
    assert st.last_error == (f"InvalidStatus: {server.ws_url}: "
                             "server rejected WebSocket connection: HTTP 503")
    await wait_for(lambda: st.state == "live", timeout=10, what="live after the refusals")
    at = st.last_error_at
    await asyncio.sleep(0.2)
    assert st.last_error_at == at and "HTTP 503" in (st.last_error or "")  # the last one, kept
    await run.stop()


async def test_an_unknown_symbol_is_the_error_that_stopped_it(server: FakeBinance) -> None:
    market = MarketConfig(id="nope", venue="crypto", connector="binance", symbol="NOPE/USDT",
                          ws_url=server.ws_url, rest_url=server.rest_url)
    conn = BinanceConnector(BinanceConfig(market, backoff_initial_s=0.05, backoff_cap_s=0.1))
    await asyncio.wait_for(conn.run(asyncio.Queue()), 5)
    assert conn.stats.state == "failed" and conn.stats.reconnects == 0
    assert conn.stats.last_error == "BadSymbol: binance does not have market symbol NOPE/USDT"
    assert conn.stats.last_error_at is not None


async def test_klines_equal_candles_of_the_published_trades(server: FakeBinance) -> None:
    """Kline history (what warms the regime model up at start) against the fake server."""
    run = Running(native(server))
    server.play()
    await all_received(server, run)
    await run.stop()
    published = [Tick("btcusdt", d["T"], float(d["p"]), float(d["q"]),
                      SELL if d["m"] else BUY, str(d["t"])) for d in server.published]
    eng = CandleEngine("btcusdt", ["1s"], 0)
    want = [b for b in eng.on_ticks(published) + eng.flush()]
    end = want[-1].open_time  # the last 1s bar may still be open: ask for the ones before it
    got = await native(server).history("1s", 50, end)
    ref = [b for b in want if b.open_time < end][-50:]
    assert [b.open_time for b in got] == [b.open_time for b in ref]
    for g, r in zip(got, ref, strict=True):
        assert (g.open, g.high, g.low, g.close, g.trade_count) == (
            r.open, r.high, r.low, r.close, r.trade_count)
        assert abs(g.volume - r.volume) < 1e-7 and abs(g.buy_volume - r.buy_volume) < 1e-7
        assert g.closed and g.sided
    assert await native(server).history("5s", 10, int(time.time() * 1000)) == []  # no 5s klines
