"""Market-store write throughput: ticks (insert-ignore), bars (revision upsert) and the same ticks
through the BufferedWriter, per backend: embedded SQLite, MySQL/MariaDB, MongoDB (nx-27017).

Run: ``.venv/bin/python bench/stores.py [N]``. MySQL: ``AETHERION_TEST_MYSQL_URL`` or
``mysql+asyncmy://root@127.0.0.1:3306``; MongoDB: ``AETHERION_TEST_MONGO_URL`` or an nx-27017
started here. A backend that is not reachable is reported and skipped. Prints one line per backend.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aetherion.config import Settings
from aetherion.domain import BUY, SELL, Bar, Tick
from aetherion.storage.market import MarketStore, MongoMarketStore, SqlMarketStore
from aetherion.storage.state import StateStore
from aetherion.storage.writer import BufferedWriter

BATCH = 500


def _ticks(n: int, market: str) -> list[Tick]:
    t0 = 1_700_000_000_000
    return [Tick(market, t0 + i, 100.0 + (i % 97) * 0.01, 0.01 * (1 + i % 7),
                 BUY if i % 2 else SELL, str(i), t0 * 1_000_000) for i in range(n)]


def _bars(n: int, revision: int) -> list[Bar]:
    return [Bar("bench", "1m", i * 60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 6.0, 4.0, 9, True, revision,
                i * 60_000, i * 60_000 + 59_000) for i in range(n)]


async def _run(store: MarketStore, n: int, spool: Path) -> str:
    ticks = _ticks(n, "bench")
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        await store.write_ticks(ticks[i:i + BATCH])
    t_ticks = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):  # the same rows again: all ignored
        await store.write_ticks(ticks[i:i + BATCH])
    t_again = time.perf_counter() - t0
    nb = n // 10
    t0 = time.perf_counter()
    for rev in (0, 1):
        bars = _bars(nb, rev)
        for i in range(0, nb, BATCH):
            await store.write_bars(bars[i:i + BATCH])
    t_bars = time.perf_counter() - t0
    writer = BufferedWriter.for_market(store, Settings(store_batch_size=BATCH), spool)
    other = _ticks(n, "bench2")
    t0 = time.perf_counter()
    writer.start()
    for i in range(0, n, 50):
        writer.put_ticks(other[i:i + 50])
    await writer.close(grace_s=600)  # a slow store gets all the time it needs: this measures it
    t_writer = time.perf_counter() - t0
    assert len(await store.ticks("bench2", n + 1)) == n
    return (f"ticks {n / t_ticks:,.0f}/s, re-write {n / t_again:,.0f}/s, "
            f"bar upserts {2 * nb / t_bars:,.0f}/s, via writer {n / t_writer:,.0f}/s")


async def _sqlite(n: int, tmp: Path) -> str:
    state = await StateStore.open(f"sqlite+aiosqlite:///{tmp}/bench.db")
    try:
        return await _run(SqlMarketStore(state.engine), n, tmp / "spool-sqlite")
    finally:
        await state.close()


async def _mysql(n: int, tmp: Path) -> str:
    server = os.environ.get("AETHERION_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306")
    name = f"aeth_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(str(make_url(server).set(database="")))
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
        state = await StateStore.open(str(make_url(server).set(database=name)))
        try:
            return await _run(SqlMarketStore(state.engine), n, tmp / "spool-mysql")
        finally:
            await state.close()
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        await admin.dispose()


async def _mongo(n: int, tmp: Path) -> str:
    url = os.environ.get("AETHERION_TEST_MONGO_URL")
    proc = None
    if not url:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or "nx-27017"
        (tmp / "nx").mkdir()
        proc = await asyncio.create_subprocess_exec(
            exe, "-p", str(port), "--data-dir", str(tmp / "nx"), "--log-file",
            str(tmp / "nx.log"), "--pid-file", str(tmp / "nx.pid"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        await asyncio.sleep(0.5)
    store = await MongoMarketStore.open(url, f"aeth_bench_{uuid.uuid4().hex[:8]}")
    try:
        return await _run(store, n, tmp / "spool-mongo")
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()
        if proc is not None:
            proc.terminate()
            await proc.wait()


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        for name, fn in (("sqlite", _sqlite), ("mysql", _mysql), ("mongo", _mongo)):
            try:
                line = await fn(n, Path(d))
            except Exception as e:  # a backend that is not there is reported
                line = f"skipped ({type(e).__name__}: {str(e)[:120]})"
            print(f"store {name}: {n} ticks: {line}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
