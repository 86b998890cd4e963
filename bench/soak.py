"""Soak: the server at a high simulated rate with 50 WebSocket clients on /ws/market.

``aetherion run`` (three simulated markets at ``--rate`` trades/s each, 1s/1m/5m bars, the
embedded SQLite store) runs for ``--seconds``; 50 clients read /ws/market and reconnect when the
server drops them for being slow. Reported: the server's resident memory after 15 s, every 15 s
after and at the end, trades processed, clients dropped, messages received, store backlog and
event-loop lag. Target: memory grows under 10% between 15 s and the end. The last line is one
JSON object.

The default, 2,000 trades/s per market (6,000 in all), is the highest rate this 2-core machine
keeps up with: at 5,000 per market the embedded store falls behind (its writes go to the spill
journal) and the event loop lags by half a second.

Run: ``.venv/bin/python bench/soak.py [--seconds 60] [--clients 50] [--rate 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def clients(url: str, n: int, until: float, received: list[int]) -> None:
    loop = asyncio.get_running_loop()

    async def one() -> None:
        while time.monotonic() < until:
            try:
                async with connect(url, max_size=2**22) as ws:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(loop.time() + until - time.monotonic()):
                            async for _ in ws:
                                received[0] += 1
            except (ConnectionClosed, InvalidStatus, OSError):
                received[1] += 1  # dropped or refused: come back, as a dashboard would
                await asyncio.sleep(0.2)

    await asyncio.gather(*(one() for _ in range(n)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2000.0, help="trades/s per market")
    args = ap.parse_args()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="aetherion-soak-"))
    env = {**os.environ, "AETHERION_SIM_RATE": str(args.rate),
           "AETHERION_TIMEFRAMES": "1s,1m,5m", "AETHERION_LOG_LEVEL": "warning",
           "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{work}/soak.db"}
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "aetherion", "run", "--port", str(port)],
                            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        start = time.monotonic()
        received = [0, 0]
        readings: dict[str, float] = {}
        samples: list[float] = []

        async def run() -> None:
            task = asyncio.create_task(clients(f"{base.replace('http', 'ws')}/ws/market",
                                               args.clients, start + args.seconds, received))
            await asyncio.sleep(max(0.0, start + 15 - time.monotonic()))
            readings["rss_15s_mb"] = rss_mb(proc.pid)
            while not task.done():  # every 15 s, to see whether it levels off
                await asyncio.wait({task}, timeout=15)
                samples.append(round(rss_mb(proc.pid), 1))

        asyncio.run(run())
        readings["rss_end_mb"] = rss_mb(proc.pid)
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        status = httpx.get(f"{base}/api/market/status", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(30)
    growth = readings["rss_end_mb"] / readings["rss_15s_mb"] - 1
    out = {
        "seconds": args.seconds, "clients": args.clients, "rate_per_market": args.rate,
        **{k: round(v, 1) for k, v in readings.items()}, "rss_growth": round(growth, 4),
        "rss_every_15s_mb": samples,
        "trades": int(metric(metrics, "aetherion_ticks_total")),
        "dropped_clients": int(metric(metrics, 'aetherion_websocket_dropped_clients_total'
                                               '{stream="market"}')),
        "client_reconnects": received[1], "messages_received": received[0],
        "store_backlog": status["stores"]["market"]["backlog"],
        "spilled_rows": status["stores"]["market"]["spilled"],
        "event_loop_lag_ms": status["stores"]["event_loop_lag_ms"],
    }
    print(f"{args.seconds:.0f} s, {args.clients} clients, {args.rate:,.0f} trades/s per market: "
          f"RSS {readings['rss_15s_mb']:.0f} MB at 15 s -> {readings['rss_end_mb']:.0f} MB "
          f"at the end ({growth:+.1%}, target < +10%); {out['trades']:,} trades processed, "
          f"{out['messages_received']:,} messages to clients, {out['dropped_clients']} drops; "
          f"loop lag p99 {out['event_loop_lag_ms']['p99']} ms", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
