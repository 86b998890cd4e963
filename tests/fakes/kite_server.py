"""A local Kite Connect ticker server, its packets packed from Kite's documented binary layout.

``ws://127.0.0.1:port?api_key=…&access_token=…`` (a wrong pair is refused with HTTP 403, as the
real ticker does). Clients send ``{"a":"subscribe","v":[tokens]}`` and
``{"a":"mode","v":[mode,[tokens]]}``; the server then publishes, for each subscribed token, the
packet of the token's mode (LTP 8 bytes, quote 44, full 184; indices 28 / 32): a frame is a
``uint16`` packet count, then per packet a ``uint16`` length and the packet, big-endian, prices
in paise. A 1-byte heartbeat goes out every ``heartbeat_s``; ``text`` frames (error, order
updates) can be injected.

The script is a list of instrument states (one per packet) published from a cursor shared by
all connections; ``published`` holds the states really sent. Fault knobs as in the Alpaca
server: ``cut_after``, ``silent`` (no packets and no heartbeat), ``inject``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

RELIANCE = 738561  # an NSE equity token (segment byte 1)
NIFTY = 256265  # the NIFTY 50 index token (segment byte 9)
KOLKATA = ZoneInfo("Asia/Kolkata")


@dataclass
class Level:
    price: int  # paise
    quantity: int
    orders: int


@dataclass
class InstrumentState:
    """What the exchange knows of one instrument at one moment (prices in paise)."""

    token: int
    ltp: int
    ltq: int = 0
    atp: int = 0
    volume: int = 0
    buy_qty: int = 0
    sell_qty: int = 0
    ohlc: tuple[int, int, int, int] = (0, 0, 0, 0)  # open, high, low, close
    ltt: int = 0  # epoch s
    oi: int = 0
    oi_high: int = 0
    oi_low: int = 0
    ets: int = 0  # exchange time, epoch s
    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)
    trade: tuple[int, float, int] | None = None  # (ts s, price rupees, qty) behind this state


def pack(s: InstrumentState, mode: str) -> bytes:
    """The packet of ``s`` in ``mode``, byte for byte as Kite documents it."""
    if s.token & 0xFF == 9:  # index: token, ltp, high, low, open, close, change, [timestamp]
        o, h, lo, c = s.ohlc
        change = (s.ltp - c) * 100 // c if c else 0
        body = struct.pack(">IIIIIIi", s.token, s.ltp, h, lo, o, c, change)
        if mode == "ltp":
            return struct.pack(">II", s.token, s.ltp)
        return body + (struct.pack(">I", s.ets) if mode == "full" else b"")
    if mode == "ltp":
        return struct.pack(">II", s.token, s.ltp)
    quote = struct.pack(">11I", s.token, s.ltp, s.ltq, s.atp, s.volume, s.buy_qty, s.sell_qty,
                        *s.ohlc)
    if mode == "quote":
        return quote
    full = quote + struct.pack(">5I", s.ltt, s.oi, s.oi_high, s.oi_low, s.ets)
    levels = (s.bids + [Level(0, 0, 0)] * 5)[:5] + (s.asks + [Level(0, 0, 0)] * 5)[:5]
    for lv in levels:
        full += struct.pack(">IIHH", lv.quantity, lv.price, lv.orders, 0)
    return full


def frame(packets: list[bytes]) -> bytes:
    out = struct.pack(">H", len(packets))
    for p in packets:
        out += struct.pack(">H", len(p)) + p
    return out


def synthetic_day(n: int, seed: int = 11, token: int = RELIANCE,
                  start: str = "2024-08-08T09:15:00") -> list[InstrumentState]:
    """A baseline state, then ``n`` states: mostly one trade each (volume grows by its
    quantity), some depth-only updates. Prices on a 5-paise grid around ₹2,900."""
    rng = random.Random(seed)
    t0 = int(datetime.fromisoformat(start).replace(tzinfo=KOLKATA).timestamp())
    ltp, volume, ms = 290_000, 1_250_000, 0
    o, h, lo = ltp, ltp, ltp
    turnover = ltp * volume
    states: list[InstrumentState] = []
    for i in range(n + 1):
        ms += rng.randint(50, 700)
        ts = t0 + ms // 1000
        trade = None
        if i and rng.random() < 0.85:
            ltp += 5 * rng.choice((-2, -1, -1, 0, 1, 1, 2))
            qty = rng.choice((1, 2, 5, 10, 25, 50, 100, 250))
            volume += qty
            turnover += ltp * qty
            h, lo = max(h, ltp), min(lo, ltp)
            trade = (ts, ltp / 100, qty)
        shift = rng.randint(0, 1)  # the last trade was at the bid (0) or at the ask (1)
        bids = [Level(ltp - 5 * (k + shift), rng.randint(1, 900), rng.randint(1, 20))
                for k in range(5)]
        asks = [Level(ltp + 5 * (k + 1 - shift), rng.randint(1, 900), rng.randint(1, 20))
                for k in range(5)]
        states.append(InstrumentState(
            token, ltp, trade[2] if trade else 10, turnover // volume, volume,
            sum(b.quantity for b in bids) * 40, sum(a.quantity for a in asks) * 40,
            (o, h, lo, 289_500), trade[0] if trade else ts - 1, 0, 0, 0, ts, bids, asks, trade))
    return states


class KiteServer:
    """``async with KiteServer(script) as srv``: serves on ``srv.url``."""

    def __init__(self, script: list[InstrumentState], api_key: str = "kitekey",
                 access_token: str = "tok3n",  # noqa: S107 - a test credential
                 per_frame: int = 1,
                 heartbeat_s: float = 0.05) -> None:
        self.script = script
        self.api_key, self.access_token = api_key, access_token
        self.per_frame = per_frame
        self.heartbeat_s = heartbeat_s
        self.cursor = 0
        self.published: list[InstrumentState] = []
        self.cut_after: int | None = None
        self.cut_at: int | None = None  # close the connection when the cursor gets there
        self.silence_at: int | None = None  # go silent when the cursor gets there
        self.realtime = False  # pace by exchange times, moved to start at first send
        self._t0: tuple[int, float] | None = None
        self.silent = False
        self.inject: list[str | bytes] = []
        self.connections = 0
        self.refused = 0
        self.requests: list[dict[str, str]] = []
        self.done = asyncio.Event()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> KiteServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None,
                                   process_request=self._check)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _check(self, ws: ServerConnection, request: Request) -> Response | None:
        q = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        self.requests.append({"X-Kite-Version": request.headers.get("X-Kite-Version", ""), **q})
        if q.get("api_key") != self.api_key or q.get("access_token") != self.access_token:
            self.refused += 1
            return ws.respond(HTTPStatus.FORBIDDEN, "invalid api_key or access_token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        modes: dict[int, str] = {}
        reader = asyncio.create_task(self._read(ws, modes))
        beat = asyncio.create_task(self._heartbeat(ws))
        with contextlib.suppress(ConnectionClosed):
            await self._publish(ws, modes)
        for t in (reader, beat):
            t.cancel()
        await asyncio.gather(reader, beat, return_exceptions=True)

    async def _read(self, ws: ServerConnection, modes: dict[int, str]) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
                action, value = msg["a"], msg["v"]
                if action == "subscribe":
                    modes.update({int(t): modes.get(int(t), "quote") for t in value})
                elif action == "mode":
                    modes.update({int(t): value[0] for t in value[1] if int(t) in modes})
                elif action == "unsubscribe":
                    for t in value:
                        modes.pop(int(t), None)
            except (ValueError, KeyError, TypeError, IndexError):
                await ws.send(json.dumps({"type": "error", "data": "invalid message"}))

    async def _heartbeat(self, ws: ServerConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not self.silent:
                await ws.send(b"\x00")

    async def _publish(self, ws: ServerConnection, modes: dict[int, str]) -> None:
        while not modes and ws.state is State.OPEN:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the mode message follows the subscription
        while ws.state is State.OPEN:
            if self.silent or self.cursor >= len(self.script) or not modes:
                if self.cursor >= len(self.script):
                    self.done.set()
                await asyncio.sleep(0.01)
                continue
            if self.cut_at is not None and self.cursor >= self.cut_at:
                self.cut_at = None
                await ws.close()
                return
            if self.silence_at is not None and self.cursor >= self.silence_at:
                self.silence_at, self.silent = None, True
                continue
            while self.inject:
                await ws.send(self.inject.pop(0))
            await self._pace()
            n = self.per_frame if self.cut_after is None else min(self.per_frame, self.cut_after)
            if n == 0:
                self.cut_after = None
                await ws.close()
                return
            states = [s for s in self.script[self.cursor:self.cursor + n] if s.token in modes]
            if states:
                await ws.send(frame([pack(s, modes[s.token]) for s in states]))
            self.published.extend(states)
            self.cursor += n
            if self.cut_after is not None:
                self.cut_after -= n
            await asyncio.sleep(0)

    async def _pace(self) -> None:
        if not self.realtime:
            return
        if self._t0 is None:  # the script's times start now
            shift = int(time.time()) - self.script[self.cursor].ets
            for st in self.script[self.cursor:]:
                st.ets += shift
                st.ltt += shift
                if st.trade is not None:
                    st.trade = (st.trade[0] + shift, *st.trade[1:])
            self._t0 = (self.script[self.cursor].ets, time.time())
        ets = self.script[self.cursor].ets
        wait = (ets - self._t0[0]) - (time.time() - self._t0[1])
        if wait > 0:
            await asyncio.sleep(wait)


async def main() -> None:
    """``cd tests && python -m fakes.kite_server --port 9002``: a synthetic RELIANCE day in real
    time, from now (api_key ``kitekey``, access token ``tok3n``, instrument token 738561)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=9002)
    ap.add_argument("--packets", type=int, default=100_000)
    args = ap.parse_args()
    start = datetime.now(KOLKATA).replace(tzinfo=None).isoformat(timespec="seconds")
    srv = KiteServer(synthetic_day(args.packets, start=start))
    srv.realtime = True
    async with serve(srv._handle, "127.0.0.1", args.port, compression=None,
                     process_request=srv._check):
        print(f"kite ticker on ws://127.0.0.1:{args.port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
