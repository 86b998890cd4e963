"""Kite ticker: the binary layout, ticks from cumulative volume, credentials, and the connector
against a local server speaking the protocol (cuts, silence, garbage, refusal); kiteconnect's
own KiteTicker decodes the local server's frames into the same values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.kite_server import (
    NIFTY,
    RELIANCE,
    InstrumentState,
    KiteServer,
    Level,
    frame,
    pack,
    synthetic_day,
)

from aetherion.config import MarketConfig
from aetherion.domain import BUY, SELL, UNKNOWN_SIDE, Bar, BookSnapshot, Tick
from aetherion.features.candles import CandleEngine
from aetherion.ingest.base import Outbox
from aetherion.ingest.kite import KiteConfig, KiteConnector, KiteParser, parse_frame
from aetherion.ingest.registry import credentials_problem as check_credentials

API_KEY, TOKEN = "kitekey", "tok3n"


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KITE_KEY", API_KEY)
    monkeypatch.setenv("TEST_KITE_TOKEN", TOKEN)


def market(url: str | None = None, **kw: Any) -> MarketConfig:
    opts: dict[str, Any] = {"api_key_env": "TEST_KITE_KEY", "access_token_env": "TEST_KITE_TOKEN",
                            "instrument_token": RELIANCE} | kw
    return MarketConfig(id="reliance", venue="nse", connector="kite", symbol="RELIANCE",
                        ws_url=url, **opts)


def connector(url: str, watchdog_s: float = 10.0, **kw: Any) -> KiteConnector:
    c = KiteConnector(KiteConfig(market(url, **kw), watchdog_s=watchdog_s,
                                 backoff_initial_s=0.01, backoff_cap_s=0.05))
    c.session_open = lambda venue, now_ms: True
    return c


@contextlib.asynccontextmanager
async def running(c: KiteConnector) -> AsyncIterator[Outbox]:
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


def sample(token: int = RELIANCE) -> InstrumentState:
    return InstrumentState(
        token, 290_105, 25, 289_950, 1_250_075, 40_000, 38_000,
        (289_000, 291_000, 288_500, 289_500),
        1_723_088_700, 12, 15, 9, 1_723_088_701,
        [Level(290_100, 300, 4), Level(290_095, 120, 2)], [Level(290_110, 90, 1)])


# ---- the binary layout ---------------------------------------------------------------------


def test_full_quote_and_ltp_packets_decode_exactly() -> None:
    s = sample()
    assert [len(pack(s, m)) for m in ("ltp", "quote", "full")] == [8, 44, 184]
    ltp, quote, full = parse_frame(frame([pack(s, m) for m in ("ltp", "quote", "full")]))
    assert (ltp.mode, ltp.token, ltp.last_price) == ("ltp", RELIANCE, 2901.05)
    assert (quote.mode, quote.last_quantity, quote.average_price, quote.volume) == (
        "quote", 25, 2899.5, 1_250_075)
    assert (quote.buy_quantity, quote.sell_quantity) == (40_000, 38_000)
    assert quote.ohlc == (2890.0, 2910.0, 2885.0, 2895.0)
    assert (full.mode, full.last_trade_time, full.exchange_time, full.oi) == (
        "full", 1_723_088_700, 1_723_088_701, 12)
    assert full.bids == ((2901.0, 300, 4), (2900.95, 120, 2))  # empty levels dropped
    assert full.asks == ((2901.1, 90, 1),)


def test_index_packets_and_segment_divisors() -> None:
    idx = InstrumentState(NIFTY, 2_431_550, ohlc=(2_430_000, 2_435_000, 2_420_000, 2_425_000),
                          ets=1_723_088_701)
    q, f = parse_frame(frame([pack(idx, "quote"), pack(idx, "full")]))
    assert (q.mode, len(pack(idx, "quote")), q.tradable) == ("quote", 28, False)
    assert (f.mode, f.exchange_time, f.last_price) == ("full", 1_723_088_701, 24315.5)
    assert f.ohlc == (24300.0, 24350.0, 24200.0, 24250.0)
    cds = 0x1234_0003  # currency segment: prices in 1e-7
    assert parse_frame(frame([pack(InstrumentState(cds, 835_912_345), "ltp")]))[0].last_price \
        == pytest.approx(83.5912345)


@pytest.mark.parametrize("data", [
    b"\x00\x02\x00\x08" + b"\x00" * 8,  # says 2 packets, holds 1
    b"\x00\x01\x00\x09" + b"\x00" * 8,  # length overruns the frame
    b"\x00\x01\x00\x05" + b"\x00" * 5,  # 5 bytes is no mode
    frame([b"\x00" * 8]) + b"\x01",  # trailing byte
])
def test_malformed_frames_raise(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_frame(data)


def test_heartbeat_is_nothing() -> None:
    assert parse_frame(b"\x00") == []
    p = KiteParser("reliance", RELIANCE)
    assert p.feed(b"\x00", 1) == ([], None) and p.malformed == 0


def test_ticks_from_cumulative_volume() -> None:
    p = KiteParser("reliance", RELIANCE)
    s = sample()
    assert p.feed(frame([pack(s, "full")]), 1)[0] == []  # the baseline
    s.volume += 40
    s.ltp, s.ltt = 290_110, s.ltt + 1  # at the previous best ask
    (t,), book = p.feed(frame([pack(s, "full")]), 2)
    assert (t.ts, t.price, t.size, t.side, t.side_inferred) == (
        (s.ltt) * 1000, 2901.1, 40.0, BUY, True)
    assert t.trade_id == f"{s.ltt}-{s.volume}"
    assert book is not None and book.bids[0] == (2901.0, 300.0) and len(book.asks) == 1
    assert p.feed(frame([pack(s, "full")]), 3)[0] == []  # same volume: depth only
    s.volume += 5
    s.ltp = 290_100  # at the best bid
    assert p.feed(frame([pack(s, "quote")]), 4)[0][0].side == SELL
    assert p.feed(frame([pack(s, "ltp")]), 5)[0] == []  # no volume in LTP mode
    s.volume = 30  # volume fell: a new day, counted from zero
    assert p.feed(frame([pack(s, "full")]), 6)[0][0].size == 30.0
    other = sample(token=RELIANCE + 256)
    other.volume += 999
    assert p.feed(frame([pack(other, "full")]), 7) == ([], None)  # not our instrument


def test_index_ticks_are_prices_without_size() -> None:
    p = KiteParser("nifty", NIFTY)
    idx = InstrumentState(NIFTY, 2_431_550, ohlc=(1, 1, 1, 1), ets=100)
    (t,), _ = p.feed(frame([pack(idx, "full")]), 1)
    assert (t.ts, t.price, t.size, t.side) == (100_000, 24315.5, 0.0, UNKNOWN_SIDE)
    assert p.feed(frame([pack(idx, "full")]), 2)[0] == []  # same exchange second


def test_text_frames() -> None:
    p = KiteParser("reliance", RELIANCE)
    p.feed(json.dumps({"type": "order", "data": {"order_id": "1", "status": "COMPLETE"}}), 1)
    p.feed(json.dumps({"type": "error", "data": "Market is closed"}), 2)
    p.feed("{not json", 3)
    assert (p.order_updates, p.last_error, p.malformed) == (1, "Market is closed", 1)


def test_check_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KITE_KEY", "k")
    monkeypatch.delenv("TEST_KITE_TOKEN", raising=False)
    line = check_credentials(market())
    assert line is not None and "TEST_KITE_TOKEN" in line and "\n" not in line
    assert "instrument_token" in (check_credentials(market(instrument_token=None)) or "")
    assert "access_token_env" in (check_credentials(market(access_token_env=None)) or "")
    monkeypatch.setenv("TEST_KITE_TOKEN", "t")
    assert check_credentials(market()) is None


# ---- against the local server --------------------------------------------------------------


def server_ticks(states: list[InstrumentState]) -> list[Tick]:
    return [Tick("reliance", s.trade[0] * 1000, s.trade[1], float(s.trade[2]), UNKNOWN_SIDE)
            for s in states if s.trade is not None]


def bars_of(ticks: list[Tick]) -> list[Bar]:
    engine = CandleEngine("reliance", ("1s", "1m"), grace_ms=0)
    blank = [Tick(t.market, t.ts, t.price, t.size, UNKNOWN_SIDE) for t in ticks]
    bars = engine.on_ticks(blank) + engine.flush()
    final = {(b.timeframe, b.open_time): b for b in bars}
    return sorted(final.values(), key=lambda b: (b.timeframe, b.open_time))


async def test_streams_ticks_and_depth(creds: None) -> None:
    script = synthetic_day(600)
    async with KiteServer(script, API_KEY, TOKEN, per_frame=3) as srv:
        c = connector(srv.url)
        async with running(c) as out:
            await asyncio.wait_for(srv.done.wait(), 10)
            await asyncio.sleep(0.1)
        ticks, books = drain(out)
    assert srv.requests[0] == {"X-Kite-Version": "3", "api_key": API_KEY, "access_token": TOKEN}
    assert c.stats.state == "live" and c.stats.malformed == 0
    expected = server_ticks(script)
    assert [(t.ts, t.price, t.size) for t in ticks] == [(t.ts, t.price, t.size) for t in expected]
    assert len({t.trade_id for t in ticks}) == len(ticks)
    assert len(books) == 201 and all(len(b.bids) == len(b.asks) == 5 for b in books)
    last = script[-1]
    assert books[-1].bids == tuple((lv.price / 100, float(lv.quantity)) for lv in last.bids)
    # the quote rule against the depth before each trade
    by_id = {t.trade_id: t for t in ticks}
    for prev, cur in zip(script, script[1:], strict=False):
        if cur.trade is None:
            continue
        t = by_id[f"{cur.ltt}-{cur.volume}"]
        if cur.ltp >= prev.asks[0].price:
            assert t.side == BUY
        elif cur.ltp <= prev.bids[0].price:
            assert t.side == SELL


async def test_cuts_silence_and_garbage_leave_candles_equal_to_what_was_published(
    creds: None,
) -> None:
    script = synthetic_day(1500, seed=5)
    async with KiteServer(script, API_KEY, TOKEN, per_frame=5) as srv:
        c = connector(srv.url, watchdog_s=0.3)
        srv.cut_at = 403  # the connection drops mid-stream
        srv.silence_at = 900  # no packets, no heartbeat: the watchdog must reconnect
        async with running(c) as out:
            await until(lambda: srv.connections == 3)
            srv.inject += [b"\x00\x03\x00\x08", b"\x00\x01\x00\x07" + b"\x00" * 7,
                           json.dumps({"type": "error", "data": "Too many requests"})]
            srv.silent = False
            await asyncio.wait_for(srv.done.wait(), 10)
            await until(lambda: c.stats.malformed == 2)
            await asyncio.sleep(0.1)
        ticks, _ = drain(out)
    assert c.stats.reconnects == 2 and c.watchdog.fired == 1
    assert c.stats.error == "Too many requests"
    assert srv.published == script  # every state went out once, over three connections
    assert bars_of(ticks) == bars_of(server_ticks(script))
    assert len(bars_of(ticks)) > 20


async def test_refused_credentials_fail_without_leaking_the_token(
    creds: None, capsys: pytest.CaptureFixture[str],
) -> None:
    async with KiteServer([], API_KEY, "another-token") as srv:
        c = connector(srv.url)
        await asyncio.wait_for(c.run(asyncio.Queue()), 5)
    assert srv.refused == 1
    assert c.stats.state == "failed"
    assert c.stats.error == "websocket upgrade refused with HTTP 403 (credentials rejected)"
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + json.dumps(c.stats.as_dict())


async def test_quiet_closed_market_is_not_dead(creds: None) -> None:
    """Outside the session (and with no heartbeat) the watchdog does not reconnect."""
    async with KiteServer(synthetic_day(5), API_KEY, TOKEN) as srv:
        srv.silent = True
        c = connector(srv.url, watchdog_s=0.1)
        c.session_open = lambda venue, now_ms: False
        async with running(c):
            await until(lambda: c.stats.state == "live")
            await asyncio.sleep(0.5)
    assert srv.connections == 1 and c.watchdog.fired == 0 and c.stats.state == "live"


class MemoryCheckpoints:
    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}

    async def get_state(self, key: str) -> dict[str, Any] | None:
        return self.state.get(key)

    async def set_state(self, key: str, value: dict[str, Any]) -> None:
        self.state[key] = value


async def test_checkpoint_carries_the_volume_across_a_restart(creds: None) -> None:
    from aetherion.ingest import kite

    script = synthetic_day(40)
    ck = MemoryCheckpoints()
    today = kite._ist_day(time.time_ns() // 1_000_000)
    ck.state["kite_volume:reliance"] = {"volume": script[0].volume - 7, "day": today}
    async with KiteServer(script, API_KEY, TOKEN) as srv:
        m = market(srv.url)
        c = KiteConnector(KiteConfig(m), ck)
        async with running(c) as out:
            await asyncio.wait_for(srv.done.wait(), 10)
            await asyncio.sleep(0.1)
        ticks, _ = drain(out)
    assert ticks[0].size == 7.0  # missed while away, now counted
    saved = ck.state["kite_volume:reliance"]  # saved with the first batch (then every 5 s)
    assert saved["day"] == kite._ist_day(ticks[0].ts) and saved["volume"] == script[0].volume


# ---- the official client decodes what the local server sends ------------------------------

KITE_CLIENT = r"""
import json, sys
from kiteconnect import KiteTicker
url, token, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kws = KiteTicker("kitekey", "tok3n", root=url, reconnect=False)
got = []
def on_ticks(ws, ticks):
    got.extend(ticks)
    if len(got) >= n:
        print(json.dumps(got[:n], default=lambda d: d.timestamp()), flush=True)
        ws.close()
        ws.stop()
def on_connect(ws, response):
    ws.subscribe([token])
    ws.set_mode(ws.MODE_FULL, [token])
kws.on_ticks, kws.on_connect = on_ticks, on_connect
kws.connect()
"""


async def official_ticks(url: str, token: int, n: int) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KITE_CLIENT, url, str(token), str(n),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [x for x in out.decode().splitlines() if x.startswith("[")]
    assert lines, err.decode()[-2000:]
    got: list[dict[str, Any]] = json.loads(lines[-1])
    return got


async def test_official_client_reads_the_same_values(creds: None) -> None:
    script = synthetic_day(120, seed=3)
    async with KiteServer(script, API_KEY, TOKEN, per_frame=4) as srv:
        theirs = await official_ticks(srv.url, RELIANCE, len(script))
    async with KiteServer(script, API_KEY, TOKEN, per_frame=1) as srv:  # a book per packet
        c = connector(srv.url)
        async with running(c) as out:
            await asyncio.wait_for(srv.done.wait(), 10)
            await asyncio.sleep(0.1)
        ticks, books = drain(out)
    assert [t["mode"] for t in theirs] == ["full"] * len(script)
    # their depth == our books, level for level
    assert [[(lv["price"], float(lv["quantity"])) for lv in t["depth"]["buy"]] for t in theirs] \
        == [list(b.bids) for b in books]
    assert [[(lv["price"], float(lv["quantity"])) for lv in t["depth"]["sell"]] for t in theirs] \
        == [list(b.asks) for b in books]
    assert [int(t["exchange_timestamp"]) * 1000 for t in theirs] == [b.ts for b in books]
    # their cumulative volume, price and trade time == our ticks
    derived = [(int(cur["last_trade_time"]) * 1000, cur["last_price"],
                float(cur["volume_traded"] - prev["volume_traded"]))
               for prev, cur in zip(theirs, theirs[1:], strict=False)
               if cur["volume_traded"] > prev["volume_traded"]]
    assert derived == [(t.ts, t.price, t.size) for t in ticks]


# ---- errors shown by /api/market/status ------------------------------------------------------


async def test_an_unresolvable_host_shows_the_dns_error_without_the_token(creds: None) -> None:
    c = connector("ws://nonexistent.invalid")
    before = int(time.time() * 1000)
    async with running(c):
        await until(lambda: c.stats.reconnects >= 3)
    st = c.stats.as_dict()
    assert str(st["last_error"]).startswith("DNS lookup failed: ws://nonexistent.invalid: "), \
        st["last_error"]
    assert isinstance(st["last_error_at"], int)
    assert before <= st["last_error_at"] <= int(time.time() * 1000)
    assert TOKEN not in json.dumps(st) and API_KEY not in json.dumps(st)


async def test_refused_credentials_and_error_messages_have_a_time(creds: None) -> None:
    async with KiteServer([], API_KEY, "another-token") as srv:
        c = connector(srv.url)
        await asyncio.wait_for(c.run(asyncio.Queue()), 5)
    assert c.stats.last_error == "websocket upgrade refused with HTTP 403 (credentials rejected)"
    assert c.stats.last_error_at is not None and c.stats.reconnects == 0
    async with KiteServer(synthetic_day(50), API_KEY, TOKEN) as srv:
        srv.inject.append(json.dumps({"type": "error", "data": "Too many requests"}))
        c = connector(srv.url)
        async with running(c):
            await asyncio.wait_for(srv.done.wait(), 10)  # the error, then every packet
            await until(lambda: c.stats.messages >= 50)
        assert c.stats.last_error == "Too many requests" and c.stats.last_error_at is not None
        assert c.stats.reconnects == 0  # the venue's message did not end the connection
