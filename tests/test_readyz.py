"""/readyz tells a busy store from a dead one, on the real server (subprocess, real sockets).

Busy: the embedded SQLite store under 100 concurrent heavy history requests stays ready.
Dead: the SQL store (MariaDB behind a TCP proxy that the test stops, so connections are refused)
makes /readyz answer 503 naming it, and 200 again when the proxy is back.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from conftest import Proxy
from sqlalchemy.engine import make_url
from test_e2e import server
from test_outage import MARKET, wait

pytestmark = pytest.mark.e2e


async def load_and_probe(base: str, seconds: float) -> tuple[list[int], list[str], int]:
    """Heavy history requests at 100 concurrent for ``seconds``; /readyz asked every 0.3 s.

    Returns the /readyz status codes, their problems, and how many history requests were
    answered (to show the load was real)."""
    markets = [m["id"] for m in httpx.get(f"{base}/api/market/status").json()["markets"]]
    urls = [u for m in markets for u in (
        f"/api/market/trades/{m}?limit=5000", f"/api/market/candles/{m}?limit=5000",
        f"/api/market/features/{m}?limit=5000", f"/api/regime/{m}?limit=5000")]
    urls.append("/api/decision/history?limit=5000")
    stop = time.monotonic() + seconds
    served = 0
    codes: list[int] = []
    problems: list[str] = []
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def worker(i: int) -> None:
            nonlocal served
            while time.monotonic() < stop:
                await client.get(urls[i % len(urls)])
                served += 1
                i += 1

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as own:
                await asyncio.sleep(1.0)  # let the load build up
                while time.monotonic() < stop:
                    r = await own.get("/readyz")
                    codes.append(r.status_code)
                    problems.extend(r.json()["problems"])
                    await asyncio.sleep(0.3)

        await asyncio.gather(probe(), *(worker(i) for i in range(100)))
    return codes, problems, served


def test_readyz_stays_ready_while_the_embedded_store_is_busy(tmp_path: Path) -> None:
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/busy.db",
           "AETHERION_SIM_RATE": "200"}
    with server(env, tmp_path / "server.log", cwd=tmp_path) as base:
        wait(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready")
        time.sleep(5.0)  # rows to read
        codes, problems, served = asyncio.run(load_and_probe(base, 12.0))
    assert served >= 200, f"the load was too light to mean anything: {served} requests"
    assert len(codes) >= 5, f"/readyz asked only {len(codes)} times"
    assert set(codes) == {200}, f"/readyz under load: {codes}, problems {problems}"


@pytest.mark.mysql
def test_readyz_names_the_sql_store_when_it_cannot_be_reached(
    sql_proxy: Proxy, mysql_url: str, tmp_path: Path,
) -> None:
    url = str(make_url(mysql_url).set(host="127.0.0.1", port=sql_proxy.port))
    env = {"AETHERION_SQL_URL": url, "AETHERION_MARKETS": json.dumps([MARKET]),
           "AETHERION_TIMEFRAMES": "1s,5s", "AETHERION_DECISION_TIMEFRAME": "1s"}
    with server(env, tmp_path / "server.log", cwd=tmp_path) as base:
        wait(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready")
        sql_proxy.stop()  # connections refused, live ones cut
        r = httpx.get(f"{base}/readyz", timeout=15)
        assert r.status_code == 503, r.text
        problems = r.json()["problems"]
        assert any(p.startswith("sql unreachable") for p in problems), problems
        assert any(p.startswith("market store unreachable") for p in problems), problems
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive all the same
        sql_proxy.start()
        wait(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "ready again")
