"""Cluster failover on a Binance market: two ``aetherion run`` processes against this machine's
NATS (JetStream) and MariaDB, one Binance market on the local fake Binance server
(``tests/fakes/binance_server.py``) playing the real recording. The owner is killed (-9) while
the recording plays; the survivor takes the market over, resumes from the connector checkpoint
in the shared MySQL and backfills the missed trades by id over REST. In the end every trade of
the recording is stored exactly once, and the stored closed 1m candles equal the candles of the
recording's trades.

The recording (about six minutes of BTCUSDT) is played at ``RATE`` messages a second, restamped
to start when playback starts: trade times run ahead of the wall clock, so bars close on trades
(as live) and the clock never closes one early.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fakes.binance_server import FakeBinance, Recording, load_recording
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from test_cluster import Instance

from aetherion.domain import BUY, SELL, Bar, Tick
from aetherion.features.candles import CandleEngine

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]

NATS = ("127.0.0.1", 4222)
TTL_S = 3.0
RATE = 600.0  # messages a second: the whole recording (about 13,200) in about 22 s
KILL_AT = 0.25  # of the recording's messages published when the owner is killed
MID = "btcusdt"


def restamp(srv: FakeBinance) -> None:
    """Move the recording's times so that its first message is now (the server shifted them at
    construction, before the instances had started)."""
    shift = int(time.time() * 1000) - srv._frames[0][1]["E"]
    frames = []
    for stream, data, _ in srv._frames:
        d = dict(data)
        d["E"] += shift
        if "T" in d:
            d["T"] += shift
        frames.append((stream, d, orjson.dumps({"stream": stream, "data": d}).decode()))
    srv._frames = frames


def candles(trades: list[dict[str, Any]]) -> dict[int, Bar]:
    """The closed 1m bars of these trades, by open time (the last, still open, left out)."""
    eng = CandleEngine(MID, ["1m"], 0)
    ticks = [Tick(MID, d["T"], float(d["p"]), float(d["q"]), SELL if d["m"] else BUY,
                  str(d["t"])) for d in trades]
    return {b.open_time: b for b in eng.on_ticks(ticks) if b.timeframe == "1m" and b.closed}


@pytest.fixture(scope="module")
def recording() -> Recording:
    return load_recording("btcusdt")


@pytest.fixture
async def server(recording: Recording) -> AsyncIterator[FakeBinance]:
    srv = await FakeBinance(recording, rate=RATE, autoplay=False).start()
    yield srv
    await srv.stop()


@pytest.fixture
def nats_up() -> None:
    """Cluster mode needs the machine's NATS: not there is a failure, not a skip."""
    try:
        socket.create_connection(NATS, timeout=2).close()
    except OSError as e:
        pytest.fail(f"no NATS server at {NATS[0]}:{NATS[1]} ({e}): cluster tests need it")


@pytest.fixture
def cluster(nats_up: None, mysql_url: str, server: FakeBinance,
            tmp_path: Path) -> Iterator[list[Instance]]:
    market = {"id": MID, "venue": "crypto", "connector": "binance", "symbol": "BTC/USDT",
              "ws_url": server.ws_url, "rest_url": server.rest_url}
    env = {
        "AETHERION_MARKETS": json.dumps([market]), "AETHERION_SQL_URL": mysql_url,
        "AETHERION_NATS_URL": f"nats://{NATS[0]}:{NATS[1]}",
        "AETHERION_CLUSTER_NAME": f"t{uuid.uuid4().hex[:12]}",
        "AETHERION_LEASE_TTL_S": str(TTL_S), "AETHERION_TIMEFRAMES": "1m,5m",
        "AETHERION_HISTORY_BARS": "50", "AETHERION_LOG_FORMAT": "json",
    }
    instances = [Instance(f"i{k}", env, tmp_path) for k in (1, 2)]
    try:
        yield instances
    finally:
        for i in instances:  # whatever is left (a failed test): stopped, by its own pid
            if i.proc.poll() is None:
                i.proc.kill()
                i.proc.wait(10)


async def status(inst: Instance, client: httpx.AsyncClient) -> dict[str, Any] | None:
    """This instance's row for the market (``None`` while it does not answer)."""
    try:
        r = await client.get(f"{inst.base}/api/market/status", timeout=2)
    except httpx.TransportError:
        return None
    if r.status_code != 200:
        return None
    return next((m for m in r.json()["markets"] if m["id"] == MID), None)


async def owned_live(instances: list[Instance], within_s: float, gone: str = "") -> Instance:
    """The instance that runs the market, once every instance agrees it is live there."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient() as client:
        while True:
            for inst in instances:
                assert inst.proc.poll() is None, inst.log.read_text()[-3000:]
            rows = [await status(i, client) for i in instances]
            owners = {r["owner"] for r in rows if r is not None}
            if all(r is not None and r["state"] == "live" for r in rows) and len(owners) == 1:
                owner = owners.pop()
                if owner not in (None, gone):
                    return next(i for i in instances if i.name == owner)
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.1)


async def stored(sql_url: str) -> tuple[list[int], dict[int, dict[str, Any]]]:
    """The stored trade ids (one per row) and the stored closed 1m bars by open time."""
    engine = create_async_engine(sql_url)
    try:
        async with engine.connect() as c:
            ids = (await c.execute(text(
                "SELECT trade_id FROM market_ticks WHERE market = :m"), {"m": MID})).scalars()
            trade_ids = [int(i) for i in ids]
            rows = (await c.execute(text(
                "SELECT open_time, open, high, low, close, volume, trade_count, revision "
                "FROM market_candles WHERE market = :m AND timeframe = '1m' AND closed"),
                {"m": MID})).mappings()
            bars = {int(r["open_time"]): dict(r) for r in rows}
    finally:
        await engine.dispose()
    return trade_ids, bars


async def test_binance_market_fails_over_with_every_trade_stored_once(
    cluster: list[Instance], server: FakeBinance, mysql_url: str,
) -> None:
    t0 = time.monotonic()
    owner = await owned_live(cluster, 40)
    restamp(server)
    server.play()
    total = len(server._frames)
    await server.wait_published(int(total * KILL_AT))
    owner.proc.kill()  # kill -9: no hand-over; its lease expires
    killed_at, killed_pos = time.monotonic(), server.position
    survivors = [i for i in cluster if i is not owner]
    survivor = await owned_live(survivors, TTL_S + 15, gone=owner.name)
    took = time.monotonic() - killed_at
    assert server.position < total, "the recording ended before the survivor took over"

    await server.finished(60)
    last = server.published[-1]["t"]
    async with httpx.AsyncClient() as client:  # the survivor says it runs the market
        row = await status(survivor, client)
        assert row is not None and row["owner"] == survivor.name and row["state"] == "live"
        deadline = time.monotonic() + 20
        while True:  # until the last trade of the recording is stored
            r = await client.get(f"{survivor.base}/api/market/trades/{MID}?limit=5", timeout=2)
            if r.status_code == 200 and str(last) in {t["trade_id"] for t in r.json()["trades"]}:
                break
            assert time.monotonic() < deadline, r.text[:500]
            await asyncio.sleep(0.1)
        row = await status(survivor, client)
        assert row is not None and row["owner"] == survivor.name
        backfilled, gaps = row.get("backfilled"), (row["gaps_detected"], row["gaps_filled"])
        # it fetched the trades published while nobody ran the market, by id, all of them
        assert isinstance(backfilled, int) and backfilled > 0 and gaps[0] == gaps[1] >= 1, row
    for inst in survivors:
        assert inst.stop() == 0, inst.log.read_text()[-3000:]

    trade_ids, bars = await stored(mysql_url)
    want = [d["t"] for d in server.published]
    assert len(want) == len(server.rec.trades)
    assert len(trade_ids) == len(set(trade_ids)), "a trade stored twice"
    missing = sorted(set(want) - set(trade_ids))
    assert not missing, f"{len(missing)} trades missing, first {missing[:5]}"
    assert sorted(trade_ids) == want  # each exactly once, nothing else

    expected = candles(server.published)
    assert len(expected) >= 4 and set(bars) == set(expected), (sorted(bars), sorted(expected))
    for k, b in expected.items():
        got = bars[k]
        assert (got["open"], got["high"], got["low"], got["close"], got["trade_count"]) == (
            b.open, b.high, b.low, b.close, b.trade_count), (k, got, b)
        assert math.isclose(got["volume"], b.volume, rel_tol=1e-9, abs_tol=1e-9), (k, got, b)

    wall = time.monotonic() - t0
    print(f"binance failover: kill at message {killed_pos}/{total}, {owner.name} → "
          f"{survivor.name} live after {took:.1f} s; backfilled {backfilled} trades, gaps "
          f"(detected, filled) {gaps}; {len(want)} trades; "
          f"{len(expected)} closed 1m bars; {wall:.1f} s")
