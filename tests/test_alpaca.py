"""Alpaca stream v2: parsing, the quote rule, credentials, and the connector against a local
server speaking the protocol with real SPY trades (cuts, silence, malformed frames, errors)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.alpaca_server import AlpacaServer, rfc3339, spy_trades, with_quotes

from aetherion.config import MarketConfig
from aetherion.domain import BUY, SELL, UNKNOWN_SIDE, Bar, BookSnapshot, Tick
from aetherion.features.candles import CandleEngine
from aetherion.ingest.alpaca import (
    BOOK_MIN_INTERVAL_MS,
    AlpacaConfig,
    AlpacaConnector,
    AlpacaParser,
    rfc3339_ns,
)
from aetherion.ingest.base import Outbox
from aetherion.ingest.registry import credentials_problem as check_credentials
from aetherion.ingest.sides import SideInference

KEY, SECRET = "PKTEST", "s3cr3t"


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ALPACA_KEY", KEY)
    monkeypatch.setenv("TEST_ALPACA_SECRET", SECRET)


def market(url: str | None = None, **kw: Any) -> MarketConfig:
    opts: dict[str, Any] = {"api_key_env": "TEST_ALPACA_KEY",
                            "api_secret_env": "TEST_ALPACA_SECRET"} | kw
    return MarketConfig(id="spy", venue="us", connector="alpaca", symbol="SPY", ws_url=url,
                        **opts)


def connector(url: str, watchdog_s: float = 30.0, **kw: Any) -> AlpacaConnector:
    c = AlpacaConnector(AlpacaConfig(market(url, **kw), watchdog_s=watchdog_s,
                                     backoff_initial_s=0.01, backoff_cap_s=0.05))
    c.session_open = lambda venue, now_ms: True  # the recording is from session hours
    return c


@contextlib.asynccontextmanager
async def running(c: AlpacaConnector) -> AsyncIterator[Outbox]:
    out: Outbox = asyncio.Queue()
    task = asyncio.create_task(c.run(out))
    try:
        yield out
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def drain(out: Outbox) -> tuple[list[Tick], list[BookSnapshot]]:
    ticks: list[Tick] = []
    books: list[BookSnapshot] = []
    while not out.empty():
        item = out.get_nowait()
        if isinstance(item, BookSnapshot):
            books.append(item)
        else:
            ticks.extend(item)
    return ticks, books


async def until(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


# ---- parsing -------------------------------------------------------------------------------


def test_rfc3339_ns_is_exact() -> None:
    assert rfc3339_ns("2021-02-22T15:51:44.208Z") == 1_614_009_104_208_000_000
    assert rfc3339_ns("2021-02-22T15:51:45.335689322Z") == 1_614_009_105_335_689_322
    assert rfc3339_ns("2021-02-22T15:51:45Z") == 1_614_009_105_000_000_000
    ns = 1_381_239_000_015_999_999
    assert rfc3339_ns(rfc3339(ns)) == ns
    for bad in ("2021-02-22T15:51:45+01:00", "2021-02-22 15:51", "2021-02-22T15:51:45.x1Z"):
        with pytest.raises(ValueError):
            rfc3339_ns(bad)


def test_quote_rule_then_tick_rule() -> None:
    s = SideInference()
    assert s.side(100.0) == UNKNOWN_SIDE  # nothing to go by
    assert s.side(100.5) == BUY  # uptick
    assert s.side(100.5) == BUY  # zero tick keeps the last side
    s.quote(100.0, 100.2)
    assert s.side(100.2) == BUY  # at the ask
    assert s.side(100.3) == BUY  # above the ask
    assert s.side(100.0) == SELL  # at the bid
    assert s.side(100.1) == BUY  # inside: uptick from 100.0
    assert s.side(100.05) == SELL  # inside: downtick
    s.quote(100.3, 100.1)  # crossed: not used, the tick rule decides
    assert s.side(100.3) == BUY


def test_parser_decodes_documented_messages_and_counts_bad_ones() -> None:
    p = AlpacaParser("spy", "SPY")
    frame = json.dumps([
        {"T": "q", "S": "SPY", "bx": "U", "bp": 87.66, "bs": 1, "ax": "Q", "ap": 87.68,
         "as": 4, "t": "2021-02-22T15:51:45.335689322Z", "c": ["R"], "z": "C"},
        {"T": "t", "i": 96921, "S": "SPY", "x": "D", "p": 87.68, "s": 1,
         "t": "2021-02-22T15:51:44.208Z", "c": ["@", "I"], "z": "C"},
        {"T": "t", "S": "AAPL", "p": 1.0, "s": 1, "t": "2021-02-22T15:51:44.208Z"},
        {"T": "b", "S": "SPY", "o": 1},  # a bar: not subscribed by us, ignored
        {"T": "t", "S": "SPY", "p": "x", "s": 1, "t": "2021-02-22T15:51:44.208Z"},
        {"T": "t", "S": "SPY", "p": 87.0, "s": 0, "t": "2021-02-22T15:51:44.208Z"},
        {"T": "t", "S": "SPY", "p": 87.0, "s": 3, "t": "yesterday"},
        "not an object",
    ])
    ticks, book = p.feed(frame, 5)
    assert ticks == [Tick("spy", 1_614_009_104_208, 87.68, 1.0, BUY, "96921", 5, True)]
    assert book == BookSnapshot("spy", 1_614_009_105_335, ((87.66, 1.0),), ((87.68, 4.0),),
                                1_614_009_105_335_689_322)
    assert p.malformed == 4
    assert p.feed(b"\x00garbage", 6) == ([], None)
    assert p.feed("{}", 7) == ([], None)
    assert p.malformed == 6


def test_check_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ALPACA_KEY", "AKVERYSECRET")
    monkeypatch.delenv("TEST_ALPACA_SECRET", raising=False)
    line = check_credentials(market())
    assert line is not None and "TEST_ALPACA_SECRET" in line and "AKVERYSECRET" not in line
    assert "\n" not in line
    no_names = check_credentials(market(api_key_env=None, api_secret_env=None))
    assert no_names is not None and "api_key_env and api_secret_env" in no_names
    monkeypatch.setenv("TEST_ALPACA_SECRET", "x")
    assert check_credentials(market()) is None


async def test_missing_credentials_fail_with_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_ALPACA_KEY", raising=False)
    c = connector("ws://127.0.0.1:9/v2/iex")
    await asyncio.wait_for(c.run(asyncio.Queue()), 2)
    assert c.stats.state == "failed"
    assert c.stats.error == check_credentials(c.market)


# ---- against the local server --------------------------------------------------------------


def bars_of(ticks: list[Tick]) -> list[Bar]:
    """Closed bars at 1s and 5s, sides blanked (the quote rule is tested on its own)."""
    engine = CandleEngine("spy", ("1s", "5s"), grace_ms=0)
    blank = [Tick(t.market, t.ts, t.price, t.size, UNKNOWN_SIDE, t.trade_id) for t in ticks]
    bars = engine.on_ticks(blank) + engine.flush()
    final = {(b.timeframe, b.open_time): b for b in bars}
    return sorted(final.values(), key=lambda b: (b.timeframe, b.open_time))


def published_ticks(srv: AlpacaServer) -> list[Tick]:
    return [Tick("spy", m["t"] // 1_000_000, m["p"], float(m["s"]), UNKNOWN_SIDE, str(m["i"]))
            for m in srv.published if m["T"] == "t"]


async def test_streams_trades_books_and_quote_rule_sides(creds: None) -> None:
    script = with_quotes(spy_trades(limit=1500))
    async with AlpacaServer(script, KEY, SECRET) as srv:
        c = connector(srv.url)
        async with running(c) as out:
            await asyncio.wait_for(srv.done.wait(), 10)
            await until(lambda: c.stats.messages >= 1 + len(script) // srv.batch)
        ticks, books = drain(out)
    assert srv.auth_attempts == [{"key": KEY, "secret": SECRET}]
    assert c.stats.state == "live" and c.stats.malformed == 0 and c.stats.reconnects == 0
    trades = [m for m in script if m["T"] == "t"]
    assert [(t.ts, t.price, t.size, t.trade_id) for t in ticks] == [
        (m["t"] // 1_000_000, m["p"], m["s"], str(m["i"])) for m in trades]
    # quotes were placed so that trade i is at the ask (i % 3 == 0) or at the bid (== 1)
    assert all(t.side_inferred for t in ticks)
    assert [t.side for i, t in enumerate(ticks) if i % 3 == 0] == [BUY] * 500
    assert [t.side for i, t in enumerate(ticks) if i % 3 == 1] == [SELL] * 500
    assert books and all(len(b.bids) == len(b.asks) == 1 for b in books)
    assert all(b.bids[0][0] <= b.asks[0][0] for b in books)
    # at most one book per 50 ms of quote time; only the trailing edge (a book held back, put
    # out when its interval ended before the next frame came) may follow closer
    assert sum(b.ts - a.ts < 50 for a, b in zip(books, books[1:], strict=False)) \
        <= c.trailing.sent


async def test_a_burst_ending_inside_the_interval_still_shows_its_last_quote(
    creds: None,
) -> None:
    """Real SPY trades and quotes, then three quotes 10 ms apart and silence: the first goes
    out at once, the others are held by the throttle, and the last one still goes out when
    its interval ends (within one interval, plus a little), once."""
    script = with_quotes(spy_trades(limit=200))
    p, t0 = script[-1]["p"], script[-1]["t"] + 1_000_000_000
    script += [{"T": "q", "S": "SPY", "bx": "Q", "bp": round(p + d, 2), "bs": 3 + k, "ax": "P",
                "ap": round(p + d + 0.02, 2), "as": 5 + k, "t": t0 + k * 10_000_000,
                "c": ["R"], "z": "B"} for k, d in enumerate((-0.01, 0.0, 0.01))]
    last = script[-1]
    want = (((last["bp"], float(last["bs"])),), ((last["ap"], float(last["as"])),))
    books: list[BookSnapshot] = []

    def shows_last() -> bool:
        books.extend(drain(out)[1])
        return bool(books) and (books[-1].bids, books[-1].asks) == want

    async with AlpacaServer(script, KEY, SECRET, batch=1) as srv:
        c = connector(srv.url)
        async with running(c) as out:
            await asyncio.wait_for(srv.done.wait(), 10)
            await until(lambda: c.stats.messages >= 1 + len(script))
            quiet_since = c.stats.last_message_mono
            assert quiet_since is not None
            slack = 0.2  # "plus a little": scheduling on a busy machine
            try:
                await until(shows_last, max(0.0, quiet_since + BOOK_MIN_INTERVAL_MS / 1000
                                            + slack - time.monotonic()))
            except TimeoutError:
                pytest.fail(f"{BOOK_MIN_INTERVAL_MS} ms (+{slack} s) after the last quote the "
                            f"newest book put out was {books[-1:]}, not the quote {want}")
            assert c.trailing.sent >= 1
        assert books[-1].ts == last["t"] // 1_000_000 and books[-1].sequence == last["t"]
        assert sum((b.bids, b.asks) == want for b in books + drain(out)[1]) == 1
    first = script[-3]
    assert any(b.ts == first["t"] // 1_000_000 for b in books)  # the leading edge
    assert not any(t.get_name() == "book-trailing-spy" for t in asyncio.all_tasks())


async def test_cuts_silence_and_garbage_leave_candles_equal_to_what_was_published(
    creds: None,
) -> None:
    script = with_quotes(spy_trades(limit=3000))
    async with AlpacaServer(script, KEY, SECRET, batch=25) as srv:
        c = connector(srv.url, watchdog_s=0.3)
        srv.cut_at = 1010  # the connection drops mid-stream
        srv.silence_at = 2000  # socket open, nothing said: the watchdog must reconnect
        async with running(c) as out:
            await until(lambda: srv.connections == 3)
            srv.inject += ["[{\"T\":\"t\",\"S\":\"SPY\",\"p\":", b"\xff\x00", "[{\"T\":\"q\"}]"]
            srv.silent = False
            await asyncio.wait_for(srv.done.wait(), 10)
            await until(lambda: c.stats.malformed == 3)
            await asyncio.sleep(0.1)
        ticks, _ = drain(out)
    assert c.stats.reconnects == 2 and c.watchdog.fired == 1
    assert c.stats.state == "live"
    assert len(ticks) == 3000 and len({t.trade_id for t in ticks}) == 3000
    assert bars_of(ticks) == bars_of(published_ticks(srv))
    assert len(bars_of(ticks)) > 10


async def test_auth_failure_is_a_failed_state_without_the_secret(
    creds: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    async with AlpacaServer([], KEY, "another-secret") as srv:
        c = connector(srv.url)
        await asyncio.wait_for(c.run(asyncio.Queue()), 5)
    assert c.stats.state == "failed"
    assert c.stats.error == "alpaca error 402: auth failed"
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + json.dumps(c.stats.as_dict())


async def test_connection_limit_is_reported_then_recovers(creds: None) -> None:
    script = with_quotes(spy_trades(limit=200))
    async with AlpacaServer(script, KEY, SECRET) as srv:
        srv.silent = True
        first, second = connector(srv.url, watchdog_s=60), connector(srv.url)
        async with running(first):
            await until(lambda: srv.active is not None)
            async with running(second) as out:
                await until(lambda: second.stats.error is not None)
                assert second.stats.state == "reconnecting"
                assert second.stats.error == "alpaca error 406: connection limit exceeded"
                await srv.active.close()  # the other session goes away
                srv.silent = False
                await asyncio.wait_for(srv.done.wait(), 10)
                await until(lambda: second.stats.state == "live" or first.stats.messages > 5)
    assert second.stats.reconnects >= 1
    assert len(drain(out)[0]) + first.stats.messages > 0


async def test_auth_timeout_then_reconnect(creds: None) -> None:
    """A server that times our auth out (here: 0 s) is an error state, retried."""
    async with AlpacaServer([], KEY, SECRET, auth_timeout_s=0.0) as srv:
        c = connector(srv.url)
        async with running(c):
            await until(lambda: srv.connections >= 2)
    assert c.stats.state == "reconnecting" or c.stats.error is not None
    assert c.stats.error is not None and "404" in c.stats.error


# ---- the official client decodes what the local server sends ------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # alpaca-py uses websockets.legacy
async def test_official_client_reads_the_same_values(creds: None) -> None:
    from alpaca.data.live import StockDataStream

    script = with_quotes(spy_trades(limit=300))
    got_trades: list[Any] = []
    got_quotes: list[Any] = []

    async def on_trade(t: Any) -> None:
        got_trades.append(t)

    async def on_quote(q: Any) -> None:
        got_quotes.append(q)

    async with AlpacaServer(script, KEY, SECRET) as srv:
        stream = StockDataStream(KEY, SECRET, url_override=srv.url)
        stream.subscribe_trades(on_trade, "SPY")
        stream.subscribe_quotes(on_quote, "SPY")
        task = asyncio.create_task(stream._run_forever())
        try:
            await until(lambda: len(got_trades) == 300 and len(got_quotes) == 300)
        finally:
            await stream.stop_ws()
            if srv.active is not None:  # wakes its receive loop up at once
                await srv.active.close()
            await asyncio.wait_for(task, 10)
    async with AlpacaServer(script, KEY, SECRET, batch=1) as srv:  # our connector, same script
        c = connector(srv.url)
        async with running(c) as out:
            await asyncio.wait_for(srv.done.wait(), 10)
            await until(lambda: c.stats.messages >= 1 + len(script))
        ticks, books = drain(out)

    def ms(dt: Any) -> int:
        return int(dt.timestamp()) * 1000 + dt.microsecond // 1000

    assert [(ms(t.timestamp), t.price, t.size, str(t.id)) for t in got_trades] == [
        (t.ts, t.price, t.size, t.trade_id) for t in ticks]
    # one frame per message: every book we emit is one of their quotes, value for value
    theirs = {(ms(q.timestamp), q.bid_price, q.bid_size, q.ask_price, q.ask_size)
              for q in got_quotes}
    assert books and all(
        (b.ts, b.bids[0][0], b.bids[0][1], b.asks[0][0], b.asks[0][1]) in theirs for b in books)


# ---- errors shown by /api/market/status ------------------------------------------------------


async def test_a_closed_port_shows_its_error_and_counts_attempts(creds: None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v2/iex"
    c = connector(url)
    before = int(time.time() * 1000)
    async with running(c):
        await until(lambda: c.stats.reconnects >= 3)
    st = c.stats.as_dict()
    assert str(st["last_error"]).startswith(f"connection refused: {url}: "), st["last_error"]
    assert isinstance(st["last_error_at"], int)
    assert before <= st["last_error_at"] <= int(time.time() * 1000)
    assert SECRET not in json.dumps(st) and KEY not in json.dumps(st)


async def test_the_venue_error_code_stays_as_the_last_error_once_live(creds: None) -> None:
    script = with_quotes(spy_trades(limit=200))
    async with AlpacaServer(script, KEY, SECRET) as srv:
        srv.silent = True
        first, second = connector(srv.url, watchdog_s=60), connector(srv.url)
        holder = asyncio.create_task(first.run(asyncio.Queue()))
        await until(lambda: srv.active is not None)
        async with running(second):
            await until(lambda: second.stats.last_error is not None)
            at = second.stats.last_error_at
            assert second.stats.reconnects >= 1 and at is not None
            holder.cancel()  # the other session goes away for good (no race to reconnect)
            await asyncio.gather(holder, return_exceptions=True)
            srv.silent = False
            await until(lambda: second.stats.state == "live")
    st = second.stats.as_dict()
    assert st["error"] is None  # nothing wrong now
    assert st["last_error"] == "alpaca error 406: connection limit exceeded"
    assert isinstance(st["last_error_at"], int) and st["last_error_at"] >= at
