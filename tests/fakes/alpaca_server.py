"""A local Alpaca market data stream v2 server, fed with the real SPY trades of AlgoSeek/Lean.

It speaks the protocol of ``wss://stream.data.alpaca.markets/v2/{feed}``: the ``connected``
greeting, ``auth`` (checked, with the auth timeout), ``subscribe`` answered by a ``subscription``
message, then arrays of ``t`` trade and ``q`` quote messages. Like the real server it answers in
JSON, or in MessagePack (timestamps as the MessagePack Timestamp extension) when the client
sends ``Content-Type: application/msgpack`` — which is what alpaca-py's ``StockDataStream`` does.
Error replies use Alpaca's codes: 402 auth failed, 404 auth timeout, 406 connection limit
exceeded (one authenticated connection at a time).

The script of messages is published from a cursor shared by all connections, so after a cut the
next connection goes on where the last one stopped; ``published`` holds what was really sent.
Fault knobs: ``cut_after`` (close after n more messages), ``silent`` (keep the socket, send
nothing), ``inject`` (raw frames sent before the next batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
import zipfile
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
from datadir import DATA as SHARED
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

DATA = SHARED / "us_equities"
NEW_YORK = ZoneInfo("America/New_York")
OPEN_MS = 34_200_000  # 09:30 New York, ms since midnight


def spy_trades(day: str = "20131008", limit: int = 2000,
               start_ms: int = OPEN_MS) -> list[dict[str, Any]]:
    """The day's SPY trades from ``start_ms`` (ms after New York midnight) as Alpaca messages
    with ``t`` in epoch ns (the wire encoding is applied when sending)."""
    midnight = datetime.strptime(day, "%Y%m%d").replace(tzinfo=NEW_YORK)
    base_ns = int(midnight.timestamp()) * 1_000_000_000
    out: list[dict[str, Any]] = []
    with zipfile.ZipFile(DATA / f"spy_{day}_trade.zip") as z:
        name = z.namelist()[0]
        with z.open(name) as f:
            for row in csv.reader(io.TextIOWrapper(f, "ascii")):
                ms, price, size, exch, cond, _suspicious = row
                if int(ms) < start_ms:
                    continue
                out.append({"T": "t", "S": "SPY", "i": len(out) + 1, "x": exch,
                            "p": int(price) / 10_000, "s": int(size),
                            "t": base_ns + int(ms) * 1_000_000 + len(out) % 1000,
                            "c": [cond], "z": "B"})
                if len(out) >= limit:
                    break
    return out


def with_quotes(trades: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A quote before every trade: trade i is at the ask when i % 3 == 0 (a buy by the quote
    rule), at the bid when i % 3 == 1 (a sell), strictly inside the spread when i % 3 == 2."""
    out: list[dict[str, Any]] = []
    for i, tr in enumerate(trades):
        p = tr["p"]
        bid, ask = {0: (p - 0.01, p), 1: (p, p + 0.01), 2: (p - 0.01, p + 0.01)}[i % 3]
        out.append({"T": "q", "S": tr["S"], "bx": "Q", "bp": round(bid, 2), "bs": 3,
                    "ax": "P", "ap": round(ask, 2), "as": 5, "t": tr["t"] - 1, "c": ["R"],
                    "z": "B"})
        out.append(tr)
    return out


def rfc3339(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, tz=ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{frac:09d}Z"


class AlpacaServer:
    """``async with AlpacaServer(script) as srv``: serves on ``srv.url``."""

    def __init__(self, script: list[dict[str, Any]], key: str = "PKTEST",
                 secret: str = "s3cr3t",  # noqa: S107 - a test credential
                 batch: int = 20, auth_timeout_s: float = 10.0) -> None:
        self.script = script
        self.key, self.secret = key, secret
        self.batch = batch
        self.auth_timeout_s = auth_timeout_s
        self.cursor = 0
        self.published: list[dict[str, Any]] = []
        self.cut_after: int | None = None
        self.cut_at: int | None = None  # close the connection when the cursor gets there
        self.silence_at: int | None = None  # go silent when the cursor gets there
        self.realtime = False  # pace the script by its own times, moved to start at first send
        self._t0: tuple[int, int] | None = None
        self.silent = False
        self.inject: list[str | bytes] = []
        self.connections = 0
        self.auth_attempts: list[dict[str, Any]] = []
        self.active: ServerConnection | None = None
        self.done = asyncio.Event()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v2/iex"

    async def __aenter__(self) -> AlpacaServer:
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    # protocol ------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        binary = (ws.request is not None and
                  ws.request.headers.get("Content-Type") == "application/msgpack")

        async def send(msgs: list[dict[str, Any]]) -> None:
            await ws.send(self._encode(msgs, binary))

        with contextlib.suppress(ConnectionClosed):
            await send([{"T": "success", "msg": "connected"}])
            if not await self._auth(ws, send, binary):
                return
            self.active = ws
            try:
                await self._serve(ws, send, binary)
            finally:
                if self.active is ws:
                    self.active = None

    async def _auth(self, ws: ServerConnection, send: Any, binary: bool) -> bool:
        try:
            async with asyncio.timeout(self.auth_timeout_s):
                msg = self._decode(await ws.recv(), binary)
        except TimeoutError:
            await send([{"T": "error", "code": 404, "msg": "auth timeout"}])
            await ws.close()
            return False
        if msg.get("action") != "auth":
            await send([{"T": "error", "code": 401, "msg": "not authenticated"}])
            await ws.close()
            return False
        self.auth_attempts.append({"key": msg.get("key"), "secret": msg.get("secret")})
        if msg.get("key") != self.key or msg.get("secret") != self.secret:
            await send([{"T": "error", "code": 402, "msg": "auth failed"}])
            await ws.close()
            return False
        if self.active is not None:
            await send([{"T": "error", "code": 406, "msg": "connection limit exceeded"}])
            await ws.close()
            return False
        await send([{"T": "success", "msg": "authenticated"}])
        return True

    async def _serve(self, ws: ServerConnection, send: Any, binary: bool) -> None:
        sub = self._decode(await ws.recv(), binary)
        trades, quotes = sub.get("trades", []), sub.get("quotes", [])
        await send([{"T": "subscription", "trades": trades, "quotes": quotes, "bars": [],
                     "updatedBars": [], "dailyBars": [], "statuses": [], "lulds": [],
                     "corrections": trades, "cancelErrors": trades}])
        wanted = {"t": set(trades), "q": set(quotes)}
        while ws.state is State.OPEN:
            if self.silent or self.cursor >= len(self.script):
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
            n = self.batch if self.cut_after is None else min(self.batch, self.cut_after)
            chunk = [m for m in self.script[self.cursor:self.cursor + n]
                     if m["S"] in wanted.get(m["T"], ())]
            if n == 0:
                self.cut_after = None
                await ws.close()
                return
            if chunk:
                await send(chunk)
            self.published.extend(chunk)
            self.cursor += n
            if self.cut_after is not None:
                self.cut_after -= n
            await asyncio.sleep(0)

    async def _pace(self) -> None:
        if not self.realtime:
            return
        if self._t0 is None:  # the script's times start now
            shift = time.time_ns() - self.script[self.cursor]["t"]
            for m in self.script[self.cursor:]:
                m["t"] += shift
            self._t0 = (self.script[self.cursor]["t"], time.time_ns())
        t = self.script[self.cursor]["t"]
        wait_ns = (t - self._t0[0]) - (time.time_ns() - self._t0[1])
        if wait_ns > 0:
            await asyncio.sleep(wait_ns / 1e9)

    # encoding ------------------------------------------------------------------------------

    @staticmethod
    def _encode(msgs: list[dict[str, Any]], binary: bool) -> str | bytes:
        if binary:
            return msgpack.packb([{k: (msgpack.Timestamp.from_unix_nano(v) if k == "t" else v)
                                   for k, v in m.items()} for m in msgs])
        return json.dumps([{k: (rfc3339(v) if k == "t" else v) for k, v in m.items()}
                           for m in msgs], separators=(",", ":"))

    @staticmethod
    def _decode(data: str | bytes, binary: bool) -> dict[str, Any]:
        msg = msgpack.unpackb(data) if binary and isinstance(data, bytes) else json.loads(data)
        return msg if isinstance(msg, dict) else {}


async def main() -> None:
    """``cd tests && python -m fakes.alpaca_server --port 9001``: the SPY day from 09:30 in
    real time, its times moved to the present when a client first subscribes (key ``PKTEST``,
    secret ``s3cr3t``)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--trades", type=int, default=200_000)
    args = ap.parse_args()
    script = with_quotes(spy_trades(limit=args.trades))
    srv = AlpacaServer(script, batch=1)
    srv.realtime = True
    async with serve(srv._handle, "127.0.0.1", args.port, compression=None):
        print(f"alpaca stream on ws://127.0.0.1:{args.port}/v2/iex", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
