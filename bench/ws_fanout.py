"""WebSocket fan-out: publish -> receipt delay at 100 messages/s to 100 clients of /ws/market,
beside a bare Starlette broadcast endpoint in the same run.

Each server runs in a process of its own and stamps every message with its publish time
(``time.time_ns()``); the clients (100 connections, one process) subtract it on receipt. Our
server is the real app (``create_app``: API key middleware, WebSocket gate, hubs with bounded
per-client queues) with one quiet simulated market; the messages go through its market hub like
live ticks. The bare endpoint keeps a set of sockets and sends each message to each of them.

Run: ``.venv/bin/python bench/ws_fanout.py [--clients 100] [--rate 100] [--seconds 10]
[--rounds 5]``.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import socket
import sys
import time
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.client import connect

MARKET = {"id": "bench", "venue": "crypto", "connector": "simulator", "symbol": "BENCH/USDT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(seq: int) -> dict[str, Any]:
    return {"type": "tick", "market": "bench", "seq": seq, "ts": time.time_ns() // 1_000_000,
            "price": 100.0 + seq % 7, "size": 0.5, "side": "buy", "t_pub": time.time_ns()}


async def publish(rate: float, send: Any) -> None:
    seq, t0 = 0, time.perf_counter()
    while True:
        seq += 1
        send(message(seq))
        await asyncio.sleep(max(0.0, t0 + seq / rate - time.perf_counter()))


def serve_aetherion(port: int, rate: float, ready: Any) -> None:
    import uvicorn

    from aetherion.api.app import create_app
    from aetherion.config import Settings
    from aetherion.logs import configure_logging

    configure_logging("console", "warning")
    settings = Settings(markets=json.dumps([MARKET]), sim_rate=0.01,  # type: ignore[arg-type]
                        history_bars=0, sql_url="sqlite+aiosqlite:///:memory:", port=port)
    app = create_app(settings)
    hub = app.state.streams.hubs["market"]

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None,
                                               access_log=False, ws_max_size=65536))
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.05)
        ready.set()
        await publish(rate, lambda m: hub.publish("bench", orjson.dumps(m).decode()))
        await task

    asyncio.run(main())


def serve_bare(port: int, rate: float, ready: Any) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    clients: set[WebSocket] = set()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        clients.add(ws)
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            clients.discard(ws)

    async def broadcast(m: dict[str, Any]) -> None:
        text = orjson.dumps(m).decode()
        for ws in list(clients):
            try:
                await ws.send_text(text)
            except Exception:  # a client that left
                clients.discard(ws)

    async def main() -> None:
        app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.05)
        ready.set()
        await publish(rate, lambda m: asyncio.ensure_future(broadcast(m)))
        await task

    asyncio.run(main())


async def receive(url: str, clients: int, seconds: float) -> tuple[list[float], int]:
    delays: list[float] = []
    counts = [0] * clients

    async def one(i: int) -> None:
        # One timeout around the whole loop, not one per message: the 100 clients share one
        # process, and a receiver that falls behind shows up as delay on the server's side.
        async with connect(url, max_size=2**20) as ws:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    async for raw in ws:
                        now = time.time_ns()
                        m = orjson.loads(raw)
                        if "t_pub" in m:
                            delays.append((now - m["t_pub"]) / 1e6)
                            counts[i] += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    return delays, min(counts)


def measure(name: str, target: Any, path: str, args: argparse.Namespace) -> dict[str, float]:
    """One round: start the server, connect the clients, collect ``args.seconds`` of delays."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    port = free_port()
    proc = ctx.Process(target=target, args=(port, args.rate, ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(60), f"{name} did not start"
        delays, least = asyncio.run(receive(f"ws://127.0.0.1:{port}{path}", args.clients,
                                            args.seconds))
    finally:
        proc.terminate()
        proc.join(10)
    a = np.array(delays[len(delays) // 10:])  # the first tenth is connection warm-up
    out = {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
           "max_ms": float(a.max()), "messages": len(delays), "least_per_client": least}
    print(f"{name:<32} {len(delays):>7,} msgs  p50 {out['p50_ms']:6.2f} ms  "
          f"p99 {out['p99_ms']:6.2f} ms  max {out['max_ms']:6.2f} ms  "
          f"(fewest per client {least})", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"{args.clients} clients, {args.rate:.0f} messages/s, {args.seconds:.0f} s a round, "
          f"{args.rounds} rounds alternating the two servers", file=sys.stderr)
    # A shared 2-core machine has stalls of tens of milliseconds that land on one round or the
    # other; alternating rounds and taking each server's median round keeps them out of the ratio.
    runs: dict[str, list[dict[str, float]]] = {"aetherion": [], "bare": []}
    for _ in range(args.rounds):
        runs["aetherion"].append(
            measure("aetherion /ws/market", serve_aetherion, "/ws/market?markets=bench", args))
        runs["bare"].append(measure("bare Starlette broadcast", serve_bare, "/ws", args))
    ours, bare = (sorted(r, key=lambda m: m["p99_ms"])[len(r) // 2] for r in runs.values())
    ratio = ours["p99_ms"] / bare["p99_ms"]
    print(f"median round: aetherion p50 {ours['p50_ms']:.2f} / p99 {ours['p99_ms']:.2f} ms, "
          f"bare p50 {bare['p50_ms']:.2f} / p99 {bare['p99_ms']:.2f} ms; "
          f"p99 aetherion / bare = {ratio:.2f} (target <= 1.25)", file=sys.stderr)
    print(json.dumps({"clients": args.clients, "rate": args.rate, "rounds": runs,
                      "aetherion": ours, "bare": bare, "p99_ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
