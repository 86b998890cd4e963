"""The event bus on the real NATS server: one stored copy per message id, per-market order,
payloads handed over unchanged, any market id through the subjects; and the ids themselves.
Each test has a stream and subject prefix of its own, deleted afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.api import RetentionPolicy

from aetherion.cluster import Bus, BusEvent
from aetherion.cluster.keys import (
    bar_msg_id,
    decision_msg_id,
    decode_token,
    encode_token,
    features_msg_id,
    tick_msg_id,
    ticks_msg_id,
)
from aetherion.decision import Decision
from aetherion.domain import BUY, Bar, Features, Tick
from aetherion.payloads import bar_json, encode

NATS_URL = os.environ.get("AETHERION_TEST_NATS_URL", "nats://127.0.0.1:4222")
ODD_MARKETS = ["btc.usdt", "a*b", "x>y", "with space", "ünïcødé", "=", "a=3D", "tab\tand/slash"]


@pytest.fixture
async def bus(nc: Client) -> AsyncIterator[Bus]:
    suffix = uuid.uuid4().hex[:12]
    b = await Bus.open(nc, stream=f"T_AETH_{suffix}", prefix=f"taeth{suffix}")
    yield b
    await nc.jetstream().delete_stream(b.stream)


def collector() -> tuple[list[BusEvent], Callable[[BusEvent], None]]:
    got: list[BusEvent] = []
    return got, got.append


async def until(cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)


def bar(market: str = "btcusdt", revision: int = 0, closed: bool = True,
        trade_count: int = 3) -> Bar:
    return Bar(market, "1m", 1_732_442_400_000, 1.0, 2.0, 0.5, 1.5, 3.0, 2.0, 1.0, trade_count,
               closed, revision)


async def test_stream_is_bounded_and_deduplicates_for_two_minutes(nc: Client, bus: Bus) -> None:
    cfg = (await nc.jetstream().stream_info(bus.stream)).config
    assert cfg.subjects == [f"{bus.prefix}.>"]
    assert cfg.retention == RetentionPolicy.LIMITS
    assert cfg.duplicate_window is not None and cfg.duplicate_window >= 120
    assert cfg.max_age == 3600 and cfg.max_bytes == 1 << 30
    again = await Bus.open(nc, stream=bus.stream, prefix=bus.prefix)  # binds, keeps it
    assert again.stream == bus.stream


async def test_a_republished_event_is_stored_and_delivered_once(nc: Client, bus: Bus) -> None:
    got, cb = collector()
    sub = await bus.subscribe(None, None, cb)
    b = bar()
    payload = encode("bar", b.market, bar_json(b)).encode()
    acks = [await bus.publish(b.market, "bar", payload, bar_msg_id(b)) for _ in range(5)]
    assert not acks[0].duplicate and all(a.duplicate for a in acks[1:])
    assert len({a.seq for a in acks}) == 1
    revised = bar(revision=1)  # a revision is a new event
    ack = await bus.publish(b.market, "bar", payload, bar_msg_id(revised))
    assert not ack.duplicate and ack.seq == acks[0].seq + 1
    info = await nc.jetstream().stream_info(bus.stream)
    assert info.state.messages == 2
    await until(lambda: sub.received + sub.duplicates == 6)
    assert (sub.received, sub.duplicates) == (2, 4)
    # the payload arrives byte for byte: the WebSocket message the local hub sends on
    assert got[0] == BusEvent("btcusdt", "bar", payload, bar_msg_id(b))
    assert got[0].text == encode("bar", "btcusdt", bar_json(b))


async def test_each_market_arrives_in_publish_order(bus: Bus) -> None:
    everything, cb_all = collector()
    one, cb_one = collector()
    await bus.subscribe(None, None, cb_all)
    sub_one = await bus.subscribe(["spy"], ["bar", "features"], cb_one)
    markets, kinds, n = ["btcusdt", "spy", "nifty"], ["bar", "features", "regime"], 150
    sends = []
    for i in range(n):  # interleaved markets and kinds, many in flight at once
        for m in markets:
            kind = kinds[i % 3]
            sends.append(bus.publish(m, kind, f"{m}:{i}".encode(), f"{m}:{kind}:{i}"))
    acks = await asyncio.gather(*sends)
    assert not any(a.duplicate for a in acks)
    await until(lambda: len(everything) == n * 3 and sub_one.received == n * 2 // 3)
    for m in markets:
        seq = [int(e.payload.split(b":")[1]) for e in everything if e.market == m]
        assert seq == list(range(n)), m
    assert {e.market for e in one} == {"spy"} and {e.kind for e in one} == {"bar", "features"}
    assert [int(e.payload.split(b":")[1]) for e in one] == [i for i in range(n) if i % 3 != 2]


async def test_odd_market_ids_round_trip_through_subjects(bus: Bus) -> None:
    everything, cb_all = collector()
    only, cb_only = collector()
    await bus.subscribe(None, ["tick"], cb_all)
    await bus.subscribe(["a*b"], None, cb_only)  # a wildcard character, taken literally
    for i, m in enumerate(ODD_MARKETS):
        assert not (await bus.publish(m, "tick", b"{}", f"odd:{i}")).duplicate
    await until(lambda: len(everything) == len(ODD_MARKETS) and len(only) == 1)
    assert [e.market for e in everything] == ODD_MARKETS
    assert [e.market for e in only] == ["a*b"]
    assert bus.parse(bus.subject("btc.usdt", "bar")) == ("btc.usdt", "bar")
    with pytest.raises(ValueError):
        bus.subject("btcusdt", "Bar.x")


async def test_a_failing_callback_does_not_end_the_subscription(bus: Bus) -> None:
    got: list[bytes] = []

    def flaky(e: BusEvent) -> None:
        if e.payload == b"bad":
            raise RuntimeError("subscriber bug")
        got.append(e.payload)

    sub = await bus.subscribe(["spy"], None, flaky)
    for i, p in enumerate([b"1", b"bad", b"2"]):
        await bus.publish("spy", "tick", p, f"spy:{i}")
    await until(lambda: len(got) == 2)
    assert (got, sub.errors, sub.received) == ([b"1", b"2"], 1, 2)
    await sub.unsubscribe()
    await bus.publish("spy", "tick", b"3", "spy:3")
    await asyncio.sleep(0.1)
    assert got == [b"1", b"2"]


@given(st.text(min_size=1))
def test_token_encoding_is_reversible_and_safe(s: str) -> None:
    token = encode_token(s)
    assert decode_token(token) == s
    assert token.isascii() and not set(token) & set(".*> \t\r\n")


def test_token_encoding_edges() -> None:
    assert encode_token("btcusdt") == "btcusdt"  # market ids as configured are unchanged
    assert encode_token("btc.usdt") == "btc=2Eusdt"
    for bad in ["", "a.b", "=6", "=zz", "=61"]:  # "=61" would be a second spelling of "a"
        with pytest.raises(ValueError):
            decode_token(bad)
    with pytest.raises(ValueError):
        encode_token("")


def test_message_ids_follow_natural_keys() -> None:
    t = Tick("btcusdt", 1_732_442_400_123, 60_000.5, 0.01, BUY, "3735683260", recv_ns=1)
    assert tick_msg_id(t) == "tick:btcusdt:id:3735683260"
    # the receive time is not part of the key: a new owner's copy of the trade has the same id
    assert tick_msg_id(Tick("btcusdt", t.ts, t.price, t.size, BUY, "3735683260", 2)) \
        == tick_msg_id(t)
    anon = Tick("spy", 1_732_442_400_123, 450.25, 100.0, BUY)
    assert tick_msg_id(anon) == "tick:spy:at:1732442400123:450.25:100.0:1"
    assert ticks_msg_id([t, t]) == "ticks:btcusdt:id:3735683260:2"
    assert bar_msg_id(bar()) == "bar:btcusdt:1m:1732442400000:0"
    assert bar_msg_id(bar(revision=1)) != bar_msg_id(bar())
    assert bar_msg_id(bar(closed=False, trade_count=4)) \
        != bar_msg_id(bar(closed=False, trade_count=5))
    assert bar_msg_id(bar("btc.usdt")) == "bar:btc=2Eusdt:1m:1732442400000:0"
    f = Features("btcusdt", "1m", 1_732_442_400_000, 1.5)
    assert features_msg_id(f) == "features:btcusdt:1m:1732442400000"
    d = Decision(id="spy:1m:1732442400000", market="spy", timeframe="1m",
                 bar_time=1_732_442_400_000, action="HOLD", strategy=None, regime="unknown",
                 confidence=None, price=1.0, rule="r", inputs={}, position_before="flat",
                 position_after="flat", exposure=0.0, created_at=1)
    assert decision_msg_id(d) == "decision:spy:1m:1732442400000"
