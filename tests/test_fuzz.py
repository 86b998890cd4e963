"""Hypothesis fuzzing of every connector's message parser: whatever arrives, no exception
escapes, and nothing that is not a finite, positive price becomes a tick."""

from __future__ import annotations

import gzip
import json
import math
import struct
from typing import Any

import msgspec
from datadir import DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aetherion.config import MarketConfig, Settings
from aetherion.domain import Tick
from aetherion.ingest.alpaca import AlpacaConnector
from aetherion.ingest.binance import BinanceDecoder, DepthMsg, TradeMsg
from aetherion.ingest.kite import KiteConnector
from aetherion.ingest.orderbook import OrderBook
from aetherion.ingest.registry import build_connector
from aetherion.ingest.stream import Frame

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _binance_frames() -> list[str]:
    with gzip.open(DATA / "binance" / "spot_btcusdt_20240808.gz", "rt") as f:
        lines = [line.split(" ", 1)[1].rstrip("\n") for _, line in zip(range(400), f,
                                                                          strict=False)]
    return [x for x in lines if x.startswith('{"stream"')]


BINANCE = _binance_frames()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["nan", "inf", "-1", "0", "1e400", "", "61000.5"]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=4), c, max_size=4), max_leaves=12)


def _mutate(doc: Any, path: list[Any], value: Any) -> Any:
    """``doc`` with the value at a path (keys/indexes, taken modulo what is there) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[hash(path[0]) % len(doc)]
        return {**doc, key: _mutate(doc[key], path[1:], value)}
    i = hash(path[0]) % len(doc)
    return [*doc[:i], _mutate(doc[i], path[1:], value), *doc[i + 1:]]


def _sane(ticks: list[Tick]) -> None:
    for t in ticks:
        assert math.isfinite(t.price) and t.price > 0, t
        assert math.isfinite(t.size) and t.size >= 0, t


def _binance_field(i: int, field: str, value: Any) -> str:
    doc = json.loads(BINANCE[i])
    doc["data"][field] = value
    return json.dumps(doc)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.builds(lambda i, path, v: json.dumps(_mutate(json.loads(BINANCE[i]), path, v)),
                           st.integers(0, len(BINANCE) - 1), st.lists(st.integers(), max_size=4),
                           json_values),
                 st.builds(_binance_field, st.integers(0, len(BINANCE) - 1),
                           st.sampled_from(["p", "q", "T", "t", "E", "m", "s", "U", "u", "b", "a"]),
                           json_values)))
def test_binance_decoder_raises_only_decode_errors(raw: str | bytes) -> None:
    dec = BinanceDecoder("btcusdt")
    try:
        msg = dec.decode(raw)
    except msgspec.DecodeError:
        return  # what the connector counts as malformed and skips
    if isinstance(msg, TradeMsg):
        _sane([dec.tick(msg, 0)])
    else:
        assert isinstance(msg, DepthMsg)
        for p, q in (*msg.b, *msg.a):
            assert math.isfinite(p) and p > 0 and math.isfinite(q) and q >= 0


@FUZZ
@given(st.integers(-5, 2**40), st.integers(-5, 2**40),
       st.lists(st.tuples(st.floats(), st.floats()), max_size=5),
       st.lists(st.tuples(st.floats(), st.floats()), max_size=5))
def test_order_book_takes_any_diff(first: int, last: int, bids: list[tuple[float, float]],
                                   asks: list[tuple[float, float]]) -> None:
    book = OrderBook("btcusdt")
    book.on_snapshot(100, [(10.0, 1.0)], [(11.0, 1.0)])
    book.on_diff(first, last, bids, asks)  # applied, buffered or refused: never raises


def _alpaca() -> AlpacaConnector:
    m = MarketConfig(id="spy", venue="us", connector="alpaca", symbol="SPY",
                     api_key_env="K", api_secret_env="S")
    c = build_connector(m, Settings(markets=(m,)), None)
    assert isinstance(c, AlpacaConnector)
    return c


ALPACA = [
    [{"T": "t", "S": "SPY", "i": 52983525029461, "x": "V", "p": 167.51, "s": 100,
      "c": ["@"], "t": "2013-10-08T14:30:00.123456789Z", "z": "B"}],
    [{"T": "q", "S": "SPY", "bx": "V", "bp": 167.5, "bs": 3, "ax": "V", "ap": 167.52, "as": 2,
      "c": ["R"], "t": "2013-10-08T14:30:00.2Z", "z": "B"}],
    [{"T": "success", "msg": "authenticated"}],
]


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.builds(lambda i, path, v: json.dumps(_mutate(ALPACA[i], path, v)),
                           st.integers(0, len(ALPACA) - 1), st.lists(st.integers(), max_size=3),
                           json_values)))
def test_alpaca_decode_never_raises(data: str | bytes) -> None:
    c = _alpaca()
    ticks, _ = c.decode(Frame(data, 1))
    _sane(ticks)


def _kite() -> KiteConnector:
    m = MarketConfig(id="reliance", venue="nse", connector="kite", symbol="RELIANCE",
                     api_key_env="K", access_token_env="T", instrument_token=738561)
    c = build_connector(m, Settings(markets=(m,)), None)
    assert isinstance(c, KiteConnector)
    return c


def _kite_packet(token: int, ltp: int, qty: int, volume: int) -> bytes:
    """A 184-byte "full" quote packet as Kite documents it (prices in paise)."""
    body = struct.pack(">11i", token, ltp, qty, ltp, volume, 10, 10, ltp, ltp, ltp, ltp)
    body += struct.pack(">6i", 1_700_000_000, 0, 0, 0, 0, 1_700_000_000)
    body += b"\x00" * (184 - len(body))
    return struct.pack(">HH", 1, len(body)) + body


@FUZZ
@given(st.one_of(
    st.binary(max_size=400),
    st.builds(_kite_packet, st.sampled_from([738561, 1, 0]), st.integers(-2**31, 2**31 - 1),
              st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1)),
    st.builds(lambda b, cut: b[:cut], st.builds(_kite_packet, st.just(738561),
                                                 st.integers(1, 10**7), st.integers(0, 10**5),
                                                 st.integers(0, 10**9)),
              st.integers(0, 190)),
    st.text(max_size=200)))
def test_kite_decode_never_raises(data: bytes | str) -> None:
    c = _kite()
    for _ in range(2):  # twice: the second packet's size comes from the change in volume
        ticks, _ = c.decode(Frame(data, 1))
        _sane(ticks)


def _ccxt() -> Any:
    m = MarketConfig(id="btcusdt", venue="crypto", connector="ccxt", symbol="BTC/USDT",
                     exchange="binance")
    return build_connector(m, Settings(markets=(m,)), None)


CCXT_TRADE = {"id": "3735683259", "timestamp": 1723161255342, "price": 61837.63,
              "amount": 0.02, "side": "sell", "symbol": "BTC/USDT", "info": {}}


@FUZZ
@given(st.one_of(json_values, st.builds(lambda k, v: {**CCXT_TRADE, k: v},
                                        st.sampled_from(sorted(CCXT_TRADE)), json_values)))
def test_ccxt_trade_normalization_never_raises(trade: Any) -> None:
    """What ccxt hands over (its unified trade dicts, or whatever a broken parser returns)."""
    c = _ccxt()
    tick = c._tick(trade if isinstance(trade, dict) else {"info": trade}, 1)
    if tick is not None:
        _sane([tick])
