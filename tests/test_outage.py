"""Both stores cut off while the server runs: it keeps serving, says so, and loses nothing.

The real server (subprocess) writes to MariaDB and to an nx-27017 MongoDB server, each behind a
TCP proxy that the test stops (connections refused, live ones cut) and starts again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import NxServer, TcpProxy
from pymongo import MongoClient
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from test_e2e import collect, server

from aetherion.storage.schema import decisions

pytestmark = [pytest.mark.e2e, pytest.mark.mysql, pytest.mark.mongo]

MARKET = {"id": "btcusdt", "venue": "crypto", "connector": "simulator", "symbol": "BTC/USDT"}


class Proxy:
    """A ``TcpProxy`` on an event loop of its own thread (the test itself is synchronous)."""

    def __init__(self, host: str, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = TcpProxy(host, port)
        self.port = self.proxy.port
        self.start()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self._call(self.proxy.start())

    def stop(self) -> None:
        self._call(self.proxy.stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def proxies(mysql_url: str, own_nx: NxServer) -> Iterator[tuple[Proxy, Proxy]]:
    u = make_url(mysql_url)
    sql, mongo = Proxy(u.host or "127.0.0.1", u.port or 3306), Proxy("127.0.0.1", own_nx.port)
    yield sql, mongo
    sql.close()
    mongo.close()


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def decided_bars(url: str) -> list[int]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(decisions.c.bar_time).where(
                decisions.c.market == "btcusdt", decisions.c.timeframe == "1s"))
            return [r.bar_time for r in rows]
    finally:
        await engine.dispose()


def wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_store_outage_keeps_serving_and_loses_nothing(
    proxies: tuple[Proxy, Proxy], mysql_url: str, own_nx: NxServer, mongo_db: str,
    tmp_path: Path,
) -> None:
    sql, mongo = proxies
    sql_url = str(make_url(mysql_url).set(host="127.0.0.1", port=sql.port))
    env = {
        "AETHERION_SQL_URL": sql_url,
        "AETHERION_MONGO_URL": f"mongodb://127.0.0.1:{mongo.port}/?directConnection=true",
        "AETHERION_MONGO_DB": mongo_db, "AETHERION_MARKETS": json.dumps([MARKET]),
        "AETHERION_TIMEFRAMES": "1s,5s", "AETHERION_DECISION_TIMEFRAME": "1s",
        "AETHERION_SIM_RATE": "40",
    }
    backlog = 'aetherion_store_backlog{store="%s"}'
    with server(env, tmp_path / "server.log", cwd=tmp_path) as base:
        wait(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready")
        time.sleep(2.0)
        sql.stop()
        mongo.stop()
        cut_ms = time.time_ns() // 1_000_000
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503
        problems = " ".join(ready.json()["problems"])
        assert "sql unreachable" in problems and "market store unreachable" in problems
        wait(lambda: metric(base, backlog % "market") > 0 and metric(base, backlog % "state") > 0,
             10, "a backlog in both writers")
        # Still serving: live ticks on the stream, the market live in the status.
        msgs = asyncio.run(collect(base, "btcusdt", 2.0))
        assert sum(1 if m["type"] == "tick" else len(m.get("ticks", ())) for m in msgs) > 20
        status = httpx.get(f"{base}/api/market/status").json()
        assert status["markets"][0]["state"] == "live"
        time.sleep(4.0)
        wait(lambda: metric(base, 'aetherion_store_errors_total{store="market"}') > 0
             and metric(base, 'aetherion_store_errors_total{store="state"}') > 0,
             15, "failed writes counted")
        sql.start()
        mongo.start()
        back_ms = time.time_ns() // 1_000_000
        wait(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready again")
        wait(lambda: metric(base, backlog % "market") == 0 and metric(base, backlog % "state") == 0,
             30, "the backlogs written")
        time.sleep(1.5)
    # After a clean stop everything is written: count it.
    client: MongoClient[dict[str, Any]] = MongoClient(own_nx.url)
    try:
        db = client[mongo_db]
        ticks = list(db["market_ticks"].find({"market": "btcusdt"}, {"_id": 0}))
        bars = sorted(db["market_candles"].find(
            {"market": "btcusdt", "timeframe": "1s", "closed": True}, {"_id": 0}),
            key=lambda b: b["open_time"])
    finally:
        client.close()
    ids = [t["trade_id"] for t in ticks]
    assert len(ids) == len(set(ids)), "a tick stored twice"
    live = [b for b in bars if b["open_time"] >= min(t["ts"] for t in ticks) // 1000 * 1000 + 1000]
    times = [b["open_time"] for b in live]
    assert times == list(range(times[0], times[-1] + 1000, 1000)), "a 1s bar is missing"
    assert times[0] < cut_ms - 1000 and times[-1] > back_ms + 1000
    per_bar: dict[int, int] = {}
    for t in ticks:
        per_bar[t["ts"] // 1000 * 1000] = per_bar.get(t["ts"] // 1000 * 1000, 0) + 1
    assert all(b["trade_count"] == per_bar.get(b["open_time"]) for b in live[:-1]), \
        "a bar's trades are not all stored"
    decided = sorted(asyncio.run(decided_bars(mysql_url)))
    assert len(decided) == len(set(decided))
    during = [t for t in decided if cut_ms <= t < back_ms]
    assert len(during) >= 5, "decisions taken during the outage were not stored"
    first = decided[0]
    assert decided == list(range(first, decided[-1] + 1000, 1000)), "a decision is missing"
