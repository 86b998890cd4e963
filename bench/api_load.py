"""REST under load: 2,000 requests at 100 concurrent against the embedded default.

Starts the real server (``python -m aetherion run``) as a subprocess on a free port, with the
default markets (three simulated markets streaming) and the embedded SQLite store in a temporary
folder, lets it record for ``--warmup`` seconds, then sends ``--requests`` GETs with
``--concurrency`` in flight through one ``aiohttp`` session (lighter on the shared CPU than
httpx), spread round-robin over status,
snapshot, trades, candles, features, regime history and decision history (every market). While
the load runs it asks ``/readyz`` once a second.

Prints p50/p99 latency, the count of each status code, whether the target (p99 <= 500 ms, no 5xx)
is met, and one JSON object as the last line. It does not assert.

Run: ``.venv/bin/python bench/api_load.py [--requests 2000] [--concurrency 100] [--warmup 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx

TARGET_P99_MS = 500.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "AETHERION_LOG_FORMAT": "json",
           "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{workdir}/bench.db"}
    for name in ("AETHERION_MARKETS", "AETHERION_MONGO_URL", "AETHERION_API_KEY"):
        env.pop(name, None)  # the embedded default
    log = (workdir / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "aetherion", "run", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early; see {workdir / 'server.log'}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server not ready within 60 s")
        time.sleep(0.3)


def paths(markets: list[str]) -> list[str]:
    out = ["/api/market/status", "/api/decision/history"]
    for m in markets:
        out += [f"/api/market/snapshot/{m}", f"/api/market/trades/{m}",
                f"/api/market/candles/{m}", f"/api/market/features/{m}", f"/api/regime/{m}",
                f"/api/decision/history?market={m}"]
    return out


def route(url: str, markets: list[str]) -> str:
    """``url`` with its market id replaced by ``{m}`` (figures per endpoint)."""
    for m in markets:
        url = url.replace(f"/{m}", "/{m}").replace(f"={m}", "={m}")
    return url


async def load(base: str, total: int, concurrency: int) -> dict[str, Any]:
    # aiohttp, not httpx: the client shares this 2-core machine with the server, and httpx spent
    # about 2 ms of CPU a request (87% of a core at 450 req/s), so its own queue was measured.
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=60)) as client:
        async with client.get("/api/market/status") as r:
            status = await r.json()
        markets = [m["id"] for m in status["markets"]]
        urls = paths(markets)
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        per_path: dict[str, list[float]] = {}
        ready: Counter[int] = Counter()
        slow_at: dict[int, list[int]] = {}  # second of the run -> [fast, slow] requests started
        start_t = time.perf_counter()
        queue: asyncio.Queue[str] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(urls[i % len(urls)])

        async def worker() -> None:
            while True:
                try:
                    url = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    async with client.get(url) as r:
                        await r.read()
                        code = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as e:
                    code = type(e).__name__
                ms = (time.perf_counter() - t0) * 1000
                latencies.append(ms)
                slow_at.setdefault(int(t0 - start_t), [0, 0])[ms > TARGET_P99_MS] += 1
                codes[code] += 1
                per_path.setdefault(route(url, markets), []).append(ms)

        async def probe_ready(stop: asyncio.Event) -> None:
            async with httpx.AsyncClient(base_url=base, timeout=10) as own:
                while not stop.is_set():
                    try:
                        ready[(await own.get("/readyz")).status_code] += 1
                    except httpx.HTTPError:
                        ready[0] += 1
                    try:
                        await asyncio.wait_for(stop.wait(), 1.0)
                    except TimeoutError:
                        pass

        stop = asyncio.Event()
        prober = asyncio.create_task(probe_ready(stop))
        start_t = t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        stop.set()
        await prober
        async with client.get("/api/market/status") as r:
            lag = (await r.json())["stores"]["event_loop_lag_ms"]
    return {"latencies": latencies, "codes": codes, "per_path": per_path, "wall_s": wall,
            "readyz": ready, "slow_at": slow_at, "server_loop_lag_ms": lag}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of recording first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aeth-api-load-") as tmp:
        proc, base = start(Path(tmp))
        try:
            time.sleep(args.warmup)
            res = asyncio.run(load(base, args.requests, args.concurrency))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    lat: list[float] = res["latencies"]
    codes: Counter[str] = res["codes"]
    p50, p99 = pct(lat, 0.50), pct(lat, 0.99)
    five = sum(n for c, n in codes.items() if not c.isdigit() or c.startswith("5"))
    met = p99 <= TARGET_P99_MS and five == 0
    print(f"{len(lat)} requests at {args.concurrency} concurrent in {res['wall_s']:.1f} s "
          f"({len(lat) / res['wall_s']:.0f} req/s)")
    print(f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {max(lat):.0f} ms")
    print("status codes: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    for path, xs in sorted(res["per_path"].items()):
        print(f"  {path:32} n={len(xs):4}  p50 {pct(xs, 0.5):6.0f} ms  p99 {pct(xs, 0.99):6.0f} ms")
    print("requests started per second of the run, fast/slow (> target): " + ", ".join(
        f"{sec}s {f}/{sl}" for sec, (f, sl) in sorted(res["slow_at"].items())))
    ready: Counter[int] = res["readyz"]
    print("/readyz during the load: " + ", ".join(f"{c}: {n}" for c, n in sorted(ready.items())))
    print(f"the server's event-loop lag (its last 600 probes): {res['server_loop_lag_ms']}")
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms and no 5xx: {'met' if met else 'NOT met'}")
    print(json.dumps({"bench": "api_load", "requests": len(lat),
                      "concurrency": args.concurrency, "wall_s": round(res["wall_s"], 2),
                      "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                      "codes": dict(sorted(codes.items())),
                      "readyz": {str(k): v for k, v in sorted(ready.items())},
                      "target_p99_ms": TARGET_P99_MS, "no_5xx": five == 0, "met": met}))


if __name__ == "__main__":
    main()
