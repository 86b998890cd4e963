"""A local Binance spot server for tests: the websocket market streams and the public REST
endpoints the connectors call, fed with the real recorded messages in shared/data/binance.

It behaves as a small exchange: a publisher walks through the recording (trade and depth
messages, times moved to the present), keeps the exchange's own state (every published trade,
the order book and its update id) and broadcasts each message to the connections subscribed to
its stream, whether or not any client is connected. REST answers from that state.

Streams: ``/stream?streams=a/b`` (combined streams named in the URL, as the native client uses)
or ``/stream...`` plus ``{"method": "SUBSCRIBE", "params": [...], "id": n}`` (as ccxt.pro does),
acknowledged with ``{"result": null, "id": n}``. REST under ``/api/v3``: ``exchangeInfo``,
``depth``, ``trades``, ``historicalTrades``, ``aggTrades`` (empty), ``time``, ``ping``.

Faults a test can cause: :meth:`FakeBinance.cut` (drop every connection without a close frame,
optionally refusing new ones for a while), :meth:`FakeBinance.silence` (existing connections
receive nothing more, though pings are still answered), :meth:`FakeBinance.withhold_diffs`
(the next depth diffs are applied to the exchange's book but never sent) and
:meth:`FakeBinance.send_raw` (any frame, e.g. malformed ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import heapq
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from datadir import DATA as SHARED

DATA = SHARED / "binance"
EXCHANGE_INFO = DATA / "exchange_info_spot_btcusdt_ethusdt.json"


@dataclass
class Recording:
    symbol: str  # "BTCUSDT"
    snapshot: dict[str, Any]
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (stream, data)

    @property
    def trades(self) -> list[dict[str, Any]]:
        return [d for s, d in self.messages if s.endswith("@trade")]


@functools.lru_cache(maxsize=8)
def load_recording(name: str = "btcusdt", limit: int | None = None,
                   days: tuple[str, ...] = ("20240808",)) -> Recording:
    """Trade and depth messages of a recording, from its REST snapshot on: diffs already in the
    snapshot are left out, trades are all kept. ``limit`` caps the number of messages."""
    snapshot: dict[str, Any] | None = None
    pending: list[tuple[str, dict[str, Any]]] = []
    for day in days:
        with gzip.open(DATA / f"spot_{name}_{day}.gz", "rt") as f:
            for line in f:
                raw = line.split(" ", 1)[1]
                if "@bookTicker" in raw[:40]:
                    continue
                msg = orjson.loads(raw)
                if "lastUpdateId" in msg:
                    snapshot = snapshot or msg
                    continue
                pending.append((msg["stream"], msg["data"]))
                if limit is not None and snapshot is not None and len(pending) >= limit * 2:
                    break
    if snapshot is None:
        raise ValueError(f"no depth snapshot in the {name} recording")
    lid = snapshot["lastUpdateId"]
    msgs = [(s, d) for s, d in pending if "@trade" in s or d["u"] > lid]
    return Recording(name.upper(), snapshot, msgs[:limit] if limit else msgs)


def _rest_trade(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": d["t"], "price": d["p"], "qty": d["q"],
            "quoteQty": f"{float(d['p']) * float(d['q']):.8f}", "time": d["T"],
            "isBuyerMaker": d["m"], "isBestMatch": d.get("M", True)}


class _Conn:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request, self.ws = request, ws
        self.streams: set[str] = set()
        self.muted = False


class FakeBinance:
    """Start with ``await FakeBinance(rec).start()``; ``rate`` is messages per second
    (``None``: as fast as the clients take them); ``realtime`` paces by the recorded event
    times instead, so exchange times stay near the wall clock (latency figures make sense)."""

    def __init__(self, rec: Recording, rate: float | None = 2000.0, autoplay: bool = True,
                 shift_to_now: bool = True, realtime: bool = False) -> None:
        self.rec = rec
        self.rate = rate
        self.realtime = realtime
        self.autoplay = autoplay
        self.sym = rec.symbol.lower()
        shift = int(time.time() * 1000) - rec.messages[0][1]["E"] if shift_to_now else 0
        self._frames: list[tuple[str, dict[str, Any], str]] = []
        for stream, data in rec.messages:
            d = dict(data)
            d["E"] += shift
            if "T" in d:
                d["T"] += shift
            text = orjson.dumps({"stream": stream, "data": d}).decode()
            self._frames.append((stream, d, text))
        self.bids = {float(p): q for p, q in rec.snapshot["bids"]}
        self.asks = {float(p): q for p, q in rec.snapshot["asks"]}
        self.update_id: int = rec.snapshot["lastUpdateId"]
        self.published: list[dict[str, Any]] = []  # trades, as the stream sent them
        self.position = 0
        self.conns: list[_Conn] = []
        self.requests: dict[str, int] = {}
        self.ws_connects = 0
        self.refused = 0
        self._refuse_until = 0.0
        self._refuse_left = 0  # connections still to refuse after a cut
        self._withhold = 0
        self.withheld = 0
        self._go = asyncio.Event()
        self._done = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    # lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> FakeBinance:
        app = web.Application()
        app.router.add_get("/stream{tail:.*}", self._ws)
        app.router.add_get("/api/v3/{name}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if self.autoplay:
            self._go.set()
        self._task = asyncio.create_task(self._publish(), name="fake-binance-publisher")
        return self

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for c in list(self.conns):
            with contextlib.suppress(Exception):
                await c.ws.close()
        if self._runner:
            await self._runner.cleanup()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v3"

    # playback ----------------------------------------------------------------------------------

    def play(self) -> None:
        self._go.set()

    def pause(self) -> None:
        self._go.clear()

    async def finished(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._done.wait(), timeout)

    async def wait_published(self, n_messages: int, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while self.position < min(n_messages, len(self._frames)):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"published {self.position} of {n_messages}")
            await asyncio.sleep(0.005)

    async def _publish(self) -> None:
        t0 = time.monotonic()
        sent_at_t0 = 0
        while self.position < len(self._frames):
            if not self._go.is_set():
                await self._go.wait()
                t0, sent_at_t0 = time.monotonic(), self.position
            stream, data, text = self._frames[self.position]
            self.position += 1
            self._apply(stream, data)
            await self._broadcast(stream, text)
            if self.realtime and self.position < len(self._frames):
                due = t0 + (self._frames[self.position][1]["E"]
                            - self._frames[sent_at_t0][1]["E"]) / 1000.0
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif self.rate is not None:
                due = t0 + (self.position - sent_at_t0) / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif self.position % 50 == 0:
                await asyncio.sleep(0)
        self._done.set()

    def _apply(self, stream: str, data: dict[str, Any]) -> None:
        if stream.endswith("@trade"):
            self.published.append(data)
            return
        for side, levels in ((self.bids, data["b"]), (self.asks, data["a"])):
            for p, q in levels:
                if float(q) > 0:
                    side[float(p)] = q
                else:
                    side.pop(float(p), None)
        self.update_id = data["u"]

    async def _broadcast(self, stream: str, text: str) -> None:
        if "@depth" in stream and self._withhold > 0:
            self._withhold -= 1
            self.withheld += 1
            return
        for c in list(self.conns):
            if stream in c.streams and not c.muted and not c.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await c.ws.send_str(text)

    # faults ------------------------------------------------------------------------------------

    def cut(self, refuse_s: float = 0.0, refuse_at_least: int = 0) -> None:
        """Drop every connection at the TCP level (no close frame); refuse new ones for
        ``refuse_s`` seconds, and at least ``refuse_at_least`` of them however late they come
        (a loaded machine may reconnect only after ``refuse_s``)."""
        self._refuse_until = time.monotonic() + refuse_s
        self._refuse_left = refuse_at_least
        for c in list(self.conns):
            if c.request.transport is not None:
                c.request.transport.abort()
        self.conns.clear()

    def silence(self) -> None:
        """Existing connections stay open but receive nothing more (pings still answered)."""
        for c in self.conns:
            c.muted = True

    def withhold_diffs(self, n: int = 1) -> None:
        self._withhold += n

    async def send_raw(self, text: str) -> None:
        for c in list(self.conns):
            if not c.muted and not c.ws.closed:
                await c.ws.send_str(text)

    # views -------------------------------------------------------------------------------------

    def top(self, depth: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        bids = heapq.nlargest(depth, ((p, float(q)) for p, q in self.bids.items()))
        asks = heapq.nsmallest(depth, ((p, float(q)) for p, q in self.asks.items()))
        return bids, asks

    # websocket ---------------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_until or self._refuse_left > 0:
            self._refuse_left = max(0, self._refuse_left - 1)
            self.refused += 1
            return web.Response(status=503, text="refusing connections")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.ws_connects += 1
        conn = _Conn(request, ws)
        names = request.query.get("streams", "")
        conn.streams.update(s for s in names.split("/") if s)
        self.conns.append(conn)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._control(conn, msg.data)
        finally:
            if conn in self.conns:
                self.conns.remove(conn)
        return ws

    async def _control(self, conn: _Conn, text: str) -> None:
        try:
            req = orjson.loads(text)
            method, params, rid = req["method"], req.get("params", []), req["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await conn.ws.send_str('{"code": 2, "msg": "Invalid request"}')
            return
        if method == "SUBSCRIBE":
            conn.streams.update(params)
        elif method == "UNSUBSCRIBE":
            conn.streams.difference_update(params)
        elif method == "LIST_SUBSCRIPTIONS":
            await conn.ws.send_str(orjson.dumps({"result": sorted(conn.streams),
                                                 "id": rid}).decode())
            return
        await conn.ws.send_str(orjson.dumps({"result": None, "id": rid}).decode())

    # REST --------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests[name] = self.requests.get(name, 0) + 1
        q = request.query
        if name in ("depth", "trades", "historicalTrades", "aggTrades") and \
                q.get("symbol", "").upper() != self.rec.symbol:
            return self._error(400, -1121, "Invalid symbol.")
        try:
            limit = int(q.get("limit", "500"))
            from_id = int(q["fromId"]) if "fromId" in q else None
        except ValueError:
            return self._error(400, -1100, "Illegal characters found in a parameter.")
        body: Any
        if name == "exchangeInfo":
            body = orjson.loads(EXCHANGE_INFO.read_bytes())
        elif name == "depth":
            bids, asks = self.top(min(limit, 5000))
            body = {"lastUpdateId": self.update_id,
                    "bids": [[f"{p:.8f}", f"{s:.8f}"] for p, s in bids],
                    "asks": [[f"{p:.8f}", f"{s:.8f}"] for p, s in asks]}
        elif name == "trades":
            body = [_rest_trade(d) for d in self.published[-min(limit, 1000):]]
        elif name == "historicalTrades":
            body = self._historical(from_id, min(limit, 1000))
        elif name == "aggTrades":
            body = []
        elif name == "klines":
            body = self._klines(q.get("interval", "1m"), int(q.get("endTime", 2**62)),
                                min(limit, 1000))
        elif name == "time":
            body = {"serverTime": int(time.time() * 1000)}
        elif name == "ping":
            body = {}
        else:
            return self._error(404, -1000, f"unknown endpoint {name}")
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _klines(self, interval: str, end: int, limit: int) -> list[list[Any]]:
        """Klines of the trades published so far, in Binance's array layout."""
        ms = {"1s": 1000, "1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}[interval]
        rows: dict[int, list[Any]] = {}
        for d in self.published:
            t, p, q = d["T"], float(d["p"]), float(d["q"])
            k = t - t % ms
            if k > end:
                continue
            r = rows.get(k)
            if r is None:
                r = rows[k] = [k, p, p, p, p, 0.0, k + ms - 1, 0.0, 0, 0.0, 0.0, "0"]
            r[2], r[3], r[4] = max(r[2], p), min(r[3], p), p
            r[5] += q
            r[7] += p * q
            r[8] += 1
            if not d["m"]:  # the buyer was the taker
                r[9] += q
                r[10] += p * q
        out = [r for k, r in sorted(rows.items())][-limit:]
        return [[r[0], *(f"{x:.8f}" for x in r[1:6]), r[6], f"{r[7]:.8f}", r[8],
                 f"{r[9]:.8f}", f"{r[10]:.8f}", r[11]] for r in out]

    def _historical(self, from_id: int | None, limit: int) -> list[dict[str, Any]]:
        if not self.published:
            return []
        if from_id is None:
            rows = self.published[-limit:]
        else:
            first = self.published[0]["t"]
            i = max(0, from_id - first)  # trade ids are consecutive
            rows = self.published[i:i + limit]
        return [_rest_trade(d) for d in rows]

    @staticmethod
    def _error(status: int, code: int, msg: str) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"code": code, "msg": msg}),
                            content_type="application/json")


async def _serve(port: int, rate: float | None, name: str) -> None:
    rec = load_recording(name, None, ("20240808", "20240809"))
    srv = FakeBinance(rec, rate=rate, realtime=rate is None)
    srv_app_port = port
    app = web.Application()
    app.router.add_get("/stream{tail:.*}", srv._ws)
    app.router.add_get("/api/v3/{name}", srv._rest)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", srv_app_port).start()
    srv.port = srv_app_port
    srv._go.set()
    print(f"fake Binance on ws={srv.ws_url} rest={srv.rest_url}: {len(srv._frames)} frames "
          f"({name}), {rate or 'real time'} msgs/s", flush=True)
    try:
        await srv._publish()
        print("recording done; serving REST until interrupted", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="local Binance spot server fed with a recording")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="messages/s (default: real time, paced by the recorded event times)")
    ap.add_argument("--symbol", default="btcusdt", choices=["btcusdt", "ethusdt"])
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(a.port, a.rate or None, a.symbol))
