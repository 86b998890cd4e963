"""Cluster mode: failover time, events through NATS, and WebSocket delivery latency.

Three instances (``scripts/cluster.py``) against this machine's NATS and MariaDB with
``--markets`` simulated markets. Measures, and prints as a table and one JSON line:

- WebSocket latency (trade time → client receive) for a client of instance ``i1`` following
  every market: markets ``i1`` owns (owner → bus → ``i1``) beside markets owned by the others
  (owner → bus → ``i1``, another process); p50/p99 over ``--seconds``;
- events published on the bus per second (all instances);
- failover: kill -9 of the busiest instance → every market live on a survivor, per the
  survivors' ``/api/market/status``.

Run: ``.venv/bin/python bench/cluster_failover.py [--markets 12] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import cluster as launcher

TTL_S = 5.0


def markets(n: int) -> list[dict[str, Any]]:
    venues = [("crypto", 60_000.0), ("us", 450.0), ("nse", 22_000.0)]
    return [{"id": f"m{k:02d}", "venue": venues[k % 3][0], "connector": "simulator",
             "symbol": f"SIM{k}", "start_price": venues[k % 3][1]} for k in range(n)]


def status(port: int) -> list[dict[str, Any]]:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/market/status", timeout=2)
        return list(r.json()["markets"]) if r.status_code == 200 else []
    except httpx.HTTPError:
        return []


def settled(ports: list[int], ids: set[str], gone: str = "") -> dict[str, str] | None:
    views = []
    for port in ports:
        rows = status(port)
        if ({r["id"] for r in rows} != ids
                or any(r["owner"] in (None, gone) or r["state"] != "live" for r in rows)):
            return None
        views.append({r["id"]: r["owner"] for r in rows})
    return views[0] if all(v == views[0] for v in views) else None


def wait(ports: list[int], ids: set[str], within_s: float, gone: str = "") -> dict[str, str]:
    end = time.monotonic() + within_s
    while (owners := settled(ports, ids, gone)) is None:
        if time.monotonic() > end:
            raise SystemExit(f"not settled within {within_s} s")
        time.sleep(0.1)
    return owners


def published(ports: list[int]) -> int:
    total = 0
    for port in ports:
        body = httpx.get(f"http://127.0.0.1:{port}/api/cluster", timeout=2).json()
        total += body["bus"]["published"]
    return total


async def latencies(port: int, seconds: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    async with connect(f"ws://127.0.0.1:{port}/ws/market", max_size=None) as ws:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                raw = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            now = time.time() * 1000
            msg = json.loads(raw)
            if msg["type"] == "ticks":
                out.setdefault(msg["market"], []).append(now - msg["ticks"][-1]["ts"])
            elif msg["type"] == "tick":
                out.setdefault(msg["market"], []).append(now - msg["ts"])
    return out


def pct(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markets", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    db = f"aeth_bench_{uuid.uuid4().hex[:8]}"
    sql_url = f"mysql+asyncmy://root@127.0.0.1:3306/{db}"
    asyncio.run(launcher.create_database(sql_url))
    ms = markets(args.markets)
    ids = {m["id"] for m in ms}
    env = {**launcher.cluster_env(sql_url), "AETHERION_MARKETS": json.dumps(ms),
           "AETHERION_CLUSTER_NAME": f"b{uuid.uuid4().hex[:10]}",
           "AETHERION_LEASE_TTL_S": str(TTL_S), "AETHERION_TIMEFRAMES": "1s,5s,1m",
           "AETHERION_HISTORY_BARS": "120", "AETHERION_LOG_LEVEL": "warning"}
    base = 8200
    procs = launcher.start(3, base, env, Path(f"var/bench-cluster/{db}"))
    ports = [base + k for k in (1, 2, 3)]
    try:
        t0 = time.monotonic()
        owners = wait(ports, ids, 120)
        started = time.monotonic() - t0
        n0, c0 = published(ports), time.monotonic()
        lat = asyncio.run(latencies(ports[0], args.seconds))
        rate = (published(ports) - n0) / (time.monotonic() - c0)
        own = [x for m, xs in lat.items() if owners[m] == "i1" for x in xs]
        other = [x for m, xs in lat.items() if owners[m] != "i1" for x in xs]
        load = Counter(owners.values())
        busiest = load.most_common(1)[0][0]
        k = int(busiest[1:])
        procs[k - 1].kill()
        t1 = time.monotonic()
        survivors = [p for p in ports if p != base + k]
        wait(survivors, ids, 60, gone=busiest)
        failover = time.monotonic() - t1
    finally:
        launcher.stop(procs)
    (o50, o99), (r50, r99) = pct(own), pct(other)
    result = {
        "markets": args.markets, "instances": 3, "lease_ttl_s": TTL_S,
        "all_live_after_start_s": round(started, 2),
        "owners": dict(load), "bus_events_per_s": round(rate),
        "ws_latency_ms": {"owned_by_i1": {"p50": round(o50, 1), "p99": round(o99, 1),
                                          "n": len(own)},
                          "owned_elsewhere": {"p50": round(r50, 1), "p99": round(r99, 1),
                                              "n": len(other)}},
        "failover_s": round(failover, 2), "killed": busiest, "killed_markets": load[busiest],
    }
    print("| markets | all live after start | bus events/s | WS p50/p99 own | "
          "WS p50/p99 elsewhere | kill -9 → all live |", file=sys.stderr)
    print(f"| {args.markets} | {started:.1f} s | {rate:,.0f} | {o50:.1f}/{o99:.1f} ms | "
          f"{r50:.1f}/{r99:.1f} ms | {failover:.1f} s ({load[busiest]} markets) |",
          file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
