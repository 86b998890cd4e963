"""Cluster mode end to end: three ``aetherion run`` processes against this machine's NATS
(JetStream) and MariaDB, six simulated markets. Each instance lists all six with one owner,
spread over the instances; each streams all six; kill -9 of the busiest hands its markets to the
survivors within the lease TTL plus seconds; nothing is stored twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from test_e2e import collect
from websockets.asyncio.client import connect

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]

MARKETS = [
    {"id": i, "venue": v, "connector": "simulator", "symbol": s, "start_price": p}
    for i, v, s, p in (("btc", "crypto", "BTC/USDT", 60_000), ("eth", "crypto", "ETH/USDT", 3000),
                       ("spy", "us", "SPY", 450), ("qqq", "us", "QQQ", 380),
                       ("nifty", "nse", "NIFTY 50", 22_000), ("bank", "nse", "BANKNIFTY", 48_000))
]
IDS = {m["id"] for m in MARKETS}
TTL_S = 3.0


class Instance:
    def __init__(self, name: str, env: dict[str, str], home: Path) -> None:
        self.name, self.port = name, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = home / f"{name}.log"
        (home / name).mkdir()
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aetherion", "run", "--port", str(self.port)],
                env={**os.environ, **env, "AETHERION_INSTANCE_ID": name},
                stdout=subprocess.DEVNULL, stderr=err, cwd=home / name)

    def status(self) -> list[dict[str, Any]]:
        try:
            r = httpx.get(f"{self.base}/api/market/status", timeout=2)
        except httpx.TransportError:
            return []
        return list(r.json()["markets"]) if r.status_code == 200 else []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def settled(instances: list[Instance], gone: str = "") -> dict[str, str] | None:
    """market → owner when every instance agrees that all six are live with that owner (and
    that owner is not ``gone``)."""
    views = []
    for inst in instances:
        rows = inst.status()
        if {r["id"] for r in rows} != IDS or any(r["owner"] in (None, gone) for r in rows):
            return None
        if any(r["state"] != "live" for r in rows):
            return None
        views.append({r["id"]: r["owner"] for r in rows})
    return views[0] if all(v == views[0] for v in views) else None


def wait_settled(instances: list[Instance], within_s: float, gone: str = "") -> dict[str, str]:
    deadline = time.monotonic() + within_s
    while (owners := settled(instances, gone)) is None:
        for inst in instances:
            assert inst.proc.poll() is None, inst.log.read_text()[-3000:]
        assert time.monotonic() < deadline, [i.status() for i in instances]
        time.sleep(0.25)
    return owners


@pytest.fixture
def cluster(mysql_url: str, tmp_path: Path) -> Iterator[tuple[list[Instance], str]]:
    env = {
        "AETHERION_MARKETS": json.dumps(MARKETS), "AETHERION_SQL_URL": mysql_url,
        "AETHERION_NATS_URL": "nats://127.0.0.1:4222",
        "AETHERION_CLUSTER_NAME": f"t{uuid.uuid4().hex[:12]}",
        "AETHERION_LEASE_TTL_S": str(TTL_S), "AETHERION_TIMEFRAMES": "1s,5s",
        "AETHERION_DECISION_TIMEFRAME": "1s", "AETHERION_HISTORY_BARS": "120",
        "AETHERION_SIM_RATE": "20", "AETHERION_REGIME_MIN_BARS": "100",
        "AETHERION_REGIME_WINDOW": "100", "AETHERION_LOG_FORMAT": "json",
    }
    instances = [Instance(f"i{k}", env, tmp_path) for k in (1, 2, 3)]
    try:
        yield instances, mysql_url
    finally:
        codes = [i.stop() for i in instances if i.proc.poll() is None]
        assert all(c == 0 for c in codes), [i.log.read_text()[-2000:] for i in instances]


async def follow_one(base: str, market: str) -> tuple[list[str], set[str]]:
    """What the instance subscribes to while one client follows ``market``, and the kinds
    of message that client gets."""
    url = base.replace("http", "ws") + f"/ws/market?markets={market}"
    async with connect(url) as ws, httpx.AsyncClient() as http:
        await asyncio.sleep(1.0)
        following = (await http.get(f"{base}/api/cluster")).json()["following"]
        # until the market's trades arrive: its features and snapshot may come first
        kinds: set[str] = set()
        deadline = time.monotonic() + 15
        while not kinds & {"tick", "ticks"} and time.monotonic() < deadline:
            kinds.add(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])
    return following, kinds


async def duplicates(sql_url: str) -> tuple[int, int, int]:
    """(ticks, ticks stored twice, decisions stored twice for a bar)."""
    engine = create_async_engine(sql_url)
    try:
        async with engine.connect() as c:
            n = (await c.execute(text("SELECT COUNT(*) FROM market_ticks"))).scalar_one()
            twice = (await c.execute(text(
                "SELECT COUNT(*) FROM (SELECT market FROM market_ticks "
                "GROUP BY market, ts, price, size, side HAVING COUNT(*) > 1) d"))).scalar_one()
            dec = (await c.execute(text(
                "SELECT COUNT(*) FROM (SELECT market FROM decisions "
                "GROUP BY market, timeframe, bar_time HAVING COUNT(*) > 1) d"))).scalar_one()
    finally:
        await engine.dispose()
    return int(n), int(twice), int(dec)


async def fences_and_state(sql_url: str) -> tuple[dict[str, str], set[str]]:
    """(market -> the owner its fence names, markets with decisions and regimes stored)."""
    engine = create_async_engine(sql_url)
    try:
        async with engine.connect() as c:
            fences = dict((await c.execute(text("SELECT market, owner FROM market_fences"))).all())
            written = set((await c.execute(text(
                "SELECT DISTINCT d.market FROM decisions d JOIN regime_state r "
                "ON r.market = d.market"))).scalars())
    finally:
        await engine.dispose()
    return {str(k): str(v) for k, v in fences.items()}, {str(m) for m in written}


def test_three_instances_share_six_markets_and_survive_a_kill(
    cluster: tuple[list[Instance], str],
) -> None:
    instances, sql_url = cluster
    owners = wait_settled(instances, 60)
    load = Counter(owners.values())
    assert len(load) >= 2, owners  # spread, by rendezvous hashing over the live instances

    first = instances[0]
    cl = httpx.get(f"{first.base}/api/cluster", timeout=2).json()
    assert cl["following"] == []  # no client yet: no market's every event comes here
    foreign = next(m for m, o in owners.items() if o != first.name)
    snap = httpx.get(f"{first.base}/api/market/snapshot/{foreign}", timeout=2).json()
    assert snap["price"] is not None and snap["bars"]["1s"] is not None  # from the status

    following, kinds = asyncio.run(follow_one(first.base, foreign))
    assert following == [foreign] and kinds & {"tick", "ticks"}  # subscribed on demand

    for inst in instances:  # any instance streams every market, whoever owns it
        msgs = asyncio.run(collect(inst.base, "", 3.0))
        streamed = {m["market"] for m in msgs if m["type"] in ("tick", "ticks", "bar")}
        assert streamed == IDS, (inst.name, streamed)
    cl = httpx.get(f"{instances[0].base}/api/cluster", timeout=2).json()
    assert cl["mode"] == "cluster" and {m["id"] for m in cl["members"]} == {"i1", "i2", "i3"}

    busiest = next(i for i in instances if i.name == load.most_common(1)[0][0])
    busiest.proc.kill()  # kill -9: no hand-over, its leases expire
    killed_at = time.monotonic()
    survivors = [i for i in instances if i is not busiest]
    after = wait_settled(survivors, TTL_S + 12, gone=busiest.name)
    took = time.monotonic() - killed_at
    assert busiest.name not in after.values()
    print(f"failover: {took:.1f} s for {load[busiest.name]} markets of {busiest.name}")
    for inst in survivors:
        msgs = asyncio.run(collect(inst.base, "", 3.0))
        assert {m["market"] for m in msgs if m["type"] in ("tick", "ticks")} == IDS
    ticks, twice, decided_twice = asyncio.run(duplicates(sql_url))
    assert ticks > 1000 and twice == 0 and decided_twice == 0
    # Each market's state is fenced for the instance that owns it now, and its decisions and
    # regimes are stored: the owners' own writes pass the fence.
    fences, written = asyncio.run(fences_and_state(sql_url))
    assert fences == after, (fences, after)
    assert written == IDS
