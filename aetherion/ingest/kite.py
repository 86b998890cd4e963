"""NSE from the Zerodha Kite Connect ticker (``wss://ws.kite.trade?api_key=…&access_token=…``).

After connecting, the client sends ``{"a":"subscribe","v":[token]}`` and
``{"a":"mode","v":["full",[token]]}``. The server answers with:

- binary frames: a big-endian ``uint16`` packet count, then per packet a ``uint16`` length and
  the packet. The length gives the mode: 8 bytes LTP (token, last price); 44 quote (token,
  last price, last quantity, average price, cumulative day volume, total buy and sell quantity,
  open, high, low, close); 184 full (quote, then last trade time, OI, OI day high and low,
  exchange time, and 10 depth entries of quantity ``int32``, price ``int32``, orders ``int16``
  and 2 bytes of padding: 5 bids then 5 asks); 28 / 32 an index in quote / full mode (token,
  last price, high, low, open, close, change, and the exchange time in full mode). Integers are
  unsigned; prices are in paise (divide by 100; currency segment 3 by 10^7, segments 6 and 12
  by 10^4); times are epoch seconds.
- a 1-byte binary heartbeat, about once a second.
- text frames: JSON ``{"type": "error" | "order" | "message", "data": …}``.

**Ticks from cumulative volume.** Kite publishes the day's cumulative volume, not single trades.
Each packet whose volume grew by ``dv`` becomes one tick of size ``dv`` at the last price, timed
by the last trade time; trades merged between two packets become one tick (volume is conserved,
the price path between packets is not). The first packet after start only sets the baseline
(unless a checkpoint of the same day holds the volume last seen); a volume that falls is a new
day and counts from zero. Sides are inferred by the quote rule against the depth of the previous
packet (tick rule inside the spread) and marked ``side_inferred``. Indices have no volume: each
new exchange time of an index gives a tick of size 0 (price only, side unknown).

**Checkpoint** (``kite_volume:<market>``): the volume last received, its IST trading day and the
time of the last tick, saved with the ticks at most every 5 s, after a lost connection and when
the server stops (once the queue is drained). Indices keep none.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final
from urllib.parse import urlencode

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection

from aetherion.domain import UNKNOWN_SIDE, BookSnapshot, Tick
from aetherion.ingest.base import Checkpoints, ConnectorConfig, secret_envs
from aetherion.ingest.checkpoint import Position
from aetherion.ingest.sessions import SESSIONS
from aetherion.ingest.sides import SideInference
from aetherion.ingest.stream import Frame, StreamConfig, StreamConnector, StreamStats

__all__ = ["KiteConfig", "KiteConnector", "KitePacket", "KiteParser", "parse_frame"]

log = structlog.get_logger(__name__)

DEFAULT_URL: Final = "wss://ws.kite.trade"
LTP, INDEX_QUOTE, INDEX_FULL, QUOTE, FULL = 8, 28, 32, 44, 184
INDEX_SEGMENT: Final = 9


@dataclass(frozen=True, slots=True)
class KiteConfig(StreamConfig):
    watchdog_s: float = 10.0  # the ticker sends a heartbeat about every second
    checkpoint_every_s: float = 5.0

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_QUOTE = struct.Struct(">11I")
_FULL = struct.Struct(">16I" + "IIHxx" * 10)
_INDEX = struct.Struct(">6Ii")
_INDEX_FULL = struct.Struct(">6IiI")


def _divisor(token: int) -> float:
    segment = token & 0xFF
    return 1e7 if segment == 3 else 1e4 if segment in (6, 12) else 100.0


@dataclass(frozen=True, slots=True)
class KitePacket:
    """One decoded packet; prices in rupees, times in epoch seconds (0: not in this mode)."""

    token: int
    mode: str  # "ltp" | "quote" | "full"
    last_price: float
    last_quantity: int = 0
    average_price: float = 0.0
    volume: int = 0
    buy_quantity: int = 0
    sell_quantity: int = 0
    ohlc: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # open, high, low, close
    last_trade_time: int = 0
    exchange_time: int = 0
    oi: int = 0
    bids: tuple[tuple[float, int, int], ...] = ()  # price, quantity, orders; best first
    asks: tuple[tuple[float, int, int], ...] = ()
    tradable: bool = True

    def parse_to_book(self, market_id: str, recv_ns: int) -> BookSnapshot:
        """The depth as a book at the exchange time (the receive time when it has none)."""
        bids = tuple((px, float(q)) for px, q, _ in self.bids)
        asks = tuple((px, float(q)) for px, q, _ in self.asks)
        ts = self.exchange_time * 1000 if self.exchange_time else recv_ns // 1_000_000
        return BookSnapshot(market_id, ts, bids, asks, recv_ns)


def _parse_packet(p: bytes) -> KitePacket:
    n = len(p)
    token = _U32.unpack_from(p)[0]
    d = _divisor(token)
    tradable = token & 0xFF != INDEX_SEGMENT
    if n == LTP:
        return KitePacket(token, "ltp", _U32.unpack_from(p, 4)[0] / d, tradable=tradable)
    if n in (INDEX_QUOTE, INDEX_FULL):
        f = (_INDEX if n == INDEX_QUOTE else _INDEX_FULL).unpack_from(p)
        # layout: token, last, high, low, open, close, change (signed), [exchange time]
        return KitePacket(token, "quote" if n == INDEX_QUOTE else "full", f[1] / d,
                          ohlc=(f[4] / d, f[2] / d, f[3] / d, f[5] / d),
                          exchange_time=f[7] if n == INDEX_FULL else 0, tradable=False)
    if n == QUOTE:
        q = _QUOTE.unpack_from(p)
        return KitePacket(token, "quote", q[1] / d, q[2], q[3] / d, q[4], q[5], q[6],
                          (q[7] / d, q[8] / d, q[9] / d, q[10] / d), tradable=tradable)
    if n == FULL:
        f = _FULL.unpack_from(p)
        depth = [(f[i + 1] / d, f[i], f[i + 2]) for i in range(16, 46, 3)]
        return KitePacket(token, "full", f[1] / d, f[2], f[3] / d, f[4], f[5], f[6],
                          (f[7] / d, f[8] / d, f[9] / d, f[10] / d), f[11], f[15], f[12],
                          tuple(x for x in depth[:5] if x[1] > 0),
                          tuple(x for x in depth[5:] if x[1] > 0), tradable)
    raise ValueError(f"packet of {n} bytes is no Kite mode (8, 28, 32, 44 or 184)")


def parse_frame(data: bytes) -> list[KitePacket]:
    """All packets of one binary frame (none for a heartbeat); ``ValueError`` when malformed."""
    if len(data) < 2:
        return []
    count = _U16.unpack_from(data)[0]
    out: list[KitePacket] = []
    pos = 2
    for _ in range(count):
        if pos + 2 > len(data):
            raise ValueError(f"frame ends before packet {len(out) + 1} of {count}")
        size = _U16.unpack_from(data, pos)[0]
        pos += 2
        if pos + size > len(data):
            raise ValueError(f"packet {len(out) + 1} of {count} overruns the frame")
        out.append(_parse_packet(data[pos:pos + size]))
        pos += size
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} bytes after the last of {count} packets")
    return out


class _Text(msgspec.Struct):
    type: str = ""
    data: Any = None


class KiteParser:
    """Packets of one instrument → ticks (from volume changes) and 5-level books."""

    def __init__(self, market_id: str, token: int) -> None:
        self.market_id = market_id
        self.token = token
        self.volume: int | None = None  # cumulative day volume last seen
        self.last_time = 0  # exchange time of the last index tick
        self.sides = SideInference()
        self.malformed = 0
        self.order_updates = 0
        self.last_error: str | None = None
        self._text = msgspec.json.Decoder(_Text)

    def feed(self, data: str | bytes, recv_ns: int) -> tuple[list[Tick], BookSnapshot | None]:
        if isinstance(data, str):
            self._on_text(data)
            return [], None
        try:
            packets = parse_frame(data)
        except (ValueError, struct.error) as e:
            self._bad(str(e))
            return [], None
        ticks: list[Tick] = []
        book = None
        for p in packets:
            if p.token != self.token:
                continue
            tick = self._tick(p, recv_ns)
            if tick is not None:
                ticks.append(tick)
            if p.bids or p.asks:
                book = self._book(p, recv_ns)
        return ticks, book

    def _tick(self, p: KitePacket, recv_ns: int) -> Tick | None:
        if not p.tradable:
            if p.exchange_time <= self.last_time or p.last_price <= 0:
                return None
            self.last_time = p.exchange_time
            return Tick(self.market_id, p.exchange_time * 1000, p.last_price, 0.0,
                        UNKNOWN_SIDE, f"{p.exchange_time}", recv_ns)
        if p.mode == "ltp":
            return None  # no volume: nothing to size a trade with
        prev, self.volume = self.volume, p.volume
        if prev is None:
            return None
        dv = p.volume - prev if p.volume >= prev else p.volume  # a fall: a new day
        if dv <= 0 or p.last_price <= 0:
            return None
        ts_s = p.last_trade_time or p.exchange_time
        ts = ts_s * 1000 if ts_s else recv_ns // 1_000_000
        side = self.sides.side(p.last_price)
        return Tick(self.market_id, ts, p.last_price, float(dv), side, f"{ts_s}-{p.volume}",
                    recv_ns, side != UNKNOWN_SIDE)

    def _book(self, p: KitePacket, recv_ns: int) -> BookSnapshot:
        book = p.parse_to_book(self.market_id, recv_ns)
        self.sides.quote(book.bids[0][0] if book.bids else 0.0,
                         book.asks[0][0] if book.asks else 0.0)
        return book

    def _on_text(self, data: str) -> None:
        try:
            msg = self._text.decode(data)
        except msgspec.DecodeError as e:
            self._bad(f"text frame is not JSON: {e}")
            return
        if msg.type == "error":
            self.last_error = str(msg.data)
            log.warning("kite error message", market=self.market_id, error=self.last_error)
        elif msg.type == "order":
            self.order_updates += 1
            log.info("kite order update", market=self.market_id)
        else:
            log.info("kite message", market=self.market_id, type=msg.type)

    def _bad(self, why: str) -> None:
        self.malformed += 1
        log.warning("kite frame skipped", market=self.market_id, reason=why)


class KiteConnector(StreamConnector):
    """Ticks and 5-level depth of one NSE instrument from the Kite ticker."""

    name = "kite"
    config: KiteConfig
    config_type: ClassVar[type[ConnectorConfig]] = KiteConfig
    authenticates = True
    checkpoint_prefix = "kite_volume:"

    def __init__(self, config: KiteConfig, checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, checkpoints)
        m = self.market
        self.stats: StreamStats = StreamStats(m.venue, secret_envs(m))
        self.url = m.ws_url or DEFAULT_URL
        self.parser = KiteParser(m.id, m.instrument_token or 0)
        self._last_ts = 0  # time of the last tick put out, epoch ms

    def connect_url(self) -> str:
        query = urlencode({"api_key": os.environ.get(self.market.api_key_env or "", ""),
                           "access_token": os.environ.get(self.market.access_token_env or "", "")})
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}"

    def connect_headers(self) -> dict[str, str]:
        return {"X-Kite-Version": "3"}

    async def handshake(self, ws: ClientConnection) -> None:
        tokens = [self.parser.token]
        await ws.send(msgspec.json.encode({"a": "subscribe", "v": tokens}).decode())
        await ws.send(msgspec.json.encode({"a": "mode", "v": ["full", tokens]}).decode())

    async def on_frame(self, data: str | bytes, recv_ns: int) -> None:
        ticks, book = self.decode(Frame(data, recv_ns))
        await self.emit_frame(ticks, book)
        if ticks:
            self._last_ts = ticks[-1].ts
            await self.checkpointer.save()

    def decode(self, frame: Frame) -> tuple[list[Tick], BookSnapshot | None]:
        """Ticks and at most one book of a frame; what is malformed is counted and skipped."""
        before = self.parser.malformed
        ticks, book = self.parser.feed(frame.data, frame.recv_ns)
        self.stats.malformed += self.parser.malformed - before
        if self.parser.last_error is not None:
            self.stats.on_error(self.parser.last_error, state=None)  # the connection goes on
            self.parser.last_error = None
        return ticks, book

    def position(self) -> Position | None:
        volume = self.parser.volume
        if volume is None or not self._last_ts:
            return None
        return {"volume": volume, "day": _ist_day(self._last_ts), "ts": self._last_ts}

    def restore(self, state: Position) -> None:
        """The volume last seen, if it was today (IST trading day): the first packet's growth
        then counts the trades missed while we were away."""
        volume = state.get("volume")
        if isinstance(volume, int) and state.get("day") == _ist_day(time.time_ns() // 1_000_000):
            self.parser.volume = volume


def _ist_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(SESSIONS["nse"].tz).date().isoformat()
