"""Both stores cut off while the server runs: it keeps serving, says so, and loses nothing.

The real server (subprocess) writes to MariaDB and to an nx-27017 MongoDB server, each behind a
TCP proxy that the test stops (connections refused, live ones cut) and starts again. And a stop
during an outage: SIGTERM ends the process in time, the journal keeps what the stores missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import NxServer, Proxy
from pymongo import MongoClient
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from test_e2e import collect, free_port, server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aetherion.storage.schema import decisions, market_ticks

pytestmark = [pytest.mark.e2e, pytest.mark.mysql, pytest.mark.mongo]

MARKET = {"id": "btcusdt", "venue": "crypto", "connector": "simulator", "symbol": "BTC/USDT"}


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
        # live for 4 s after the stores came back, so that 1s bars past back_ms + 1 s have
        # closed (a fixed 1.5 s after a quick recovery once left the newest at back_ms + 1 s)
        time.sleep(max(1.5, back_ms / 1000 + 4.0 - time.time()))
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


def spawn(env: dict[str, str], log: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The server as ``server()`` starts it, with the process handle (to signal it)."""
    port = free_port()
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aetherion", "run", "--port", str(port)],
            env={**os.environ, "AETHERION_LOG_FORMAT": "json", **env},
            stdout=subprocess.DEVNULL, stderr=err, cwd=cwd)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        return False

    try:
        wait(up, 30, "ready")
    except BaseException:
        proc.kill()
        raise
    return proc, base


def record(base: str, out: list[tuple[float, str]]) -> threading.Thread:
    """Every trade ``/ws/market`` sends, with when it arrived, until the server goes away."""

    async def run() -> None:
        async with connect(base.replace("http", "ws") + "/ws/market?markets=btcusdt") as ws:
            async for raw in ws:
                m = json.loads(raw)
                ticks = [m] if m["type"] == "tick" else m.get("ticks", [])
                out.extend((time.monotonic(), t["trade_id"]) for t in ticks)

    def main() -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            asyncio.run(run())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread


def journaled_ticks(spool: Path) -> set[str]:
    """The trade ids in the market writer's journal (read while it may be written to)."""
    ids: set[str] = set()
    for path in spool.rglob("market/spill-*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_bytes().splitlines():
                with contextlib.suppress(ValueError):  # a line being written
                    kind, rows = json.loads(line)
                    ids.update(r["trade_id"] for r in rows if kind == "ticks")
    return ids


async def stored_ticks(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(market_ticks.c.trade_id).where(
                market_ticks.c.market == "btcusdt"))
            return [r.trade_id for r in rows]
    finally:
        await engine.dispose()


def test_sigterm_during_an_outage_stops_in_time_and_keeps_every_trade(
    sql_proxy: Proxy, mysql_url: str, tmp_path: Path,
) -> None:
    """MariaDB (both stores) cut. Trades reach the journal within about a second (what a kill
    would lose); 10 s into the outage SIGTERM: the process is gone within 10 s with everything
    it buffered in the journal; a restart writes it: every trade the stream sent more than 1 s
    before the SIGTERM is stored, once."""
    env = {
        "AETHERION_SQL_URL": str(make_url(mysql_url).set(host="127.0.0.1", port=sql_proxy.port)),
        "AETHERION_MARKETS": json.dumps([MARKET]), "AETHERION_TIMEFRAMES": "1s,5s",
        "AETHERION_DECISION_TIMEFRAME": "1s", "AETHERION_SIM_RATE": "200",
    }
    log, spool = tmp_path / "server.log", tmp_path / "var" / "spool"
    proc, base = spawn(env, log, tmp_path)
    seen: list[tuple[float, str]] = []
    try:
        listener = record(base, seen)
        time.sleep(2.0)
        sql_proxy.stop()
        cut, cut_ms = time.monotonic(), time.time_ns() // 1_000_000
        time.sleep(10.0)
        early = journaled_ticks(spool)  # what a kill -9 now would leave
        term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        took = time.monotonic() - term
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listener.join(5)
    print(f"stopped {took:.2f} s after SIGTERM, 10 s into the outage")
    assert took < 10.5, f"SIGTERM took {took:.1f} s:\n{log.read_text()[-3000:]}"
    sent = [tid for at, tid in seen if at < term - 1.0]
    during = [tid for at, tid in seen if cut + 1.0 < at < term - 1.0]
    assert len(during) > 1000 and not set(during) - journaled_ticks(spool), "not journaled"
    late = {tid for at, tid in seen if cut + 1.0 < at < term - 2.5} - early
    assert not late, f"{len(late)} trades sent 2.5 s before were still only in memory"
    sql_proxy.start()
    with server(env, log, cwd=tmp_path) as base:
        wait(lambda: not list(spool.rglob("spill-*.jsonl")), 30, "the journal written back")
    # Start-up read the stores after the journal was written back: the position comes from
    # the decisions taken during the outage.
    restored = [json.loads(line) for line in log.read_text().splitlines()
                if '"position restored"' in line]
    assert restored[-1]["last_bar_time"] > cut_ms, "start-up read the stores before the journal"
    stored = asyncio.run(stored_ticks(mysql_url))
    assert len(stored) == len(set(stored)), "a tick stored twice"
    missing = set(sent) - set(stored)
    assert not missing, f"{len(missing)} of {len(sent)} trades sent were not stored"
