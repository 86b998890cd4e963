"""Who may connect, end to end: CORS, WebSocket origins, the connection limit, message size,
and secrets kept out of logs and answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from test_e2e import server
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e

DASH = "http://dash.example"


async def close_code(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    """The code the server closed with (None: it is still sending)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None
    except TimeoutError:
        return None


async def receives(ws: ClientConnection, n: int = 3) -> bool:
    for _ in range(n):
        json.loads(await asyncio.wait_for(ws.recv(), 5))
    return True


def test_cors_origins_limit_and_message_size(tmp_path: Path) -> None:
    env = {"AETHERION_CORS_ORIGINS": DASH, "AETHERION_WS_ORIGINS": DASH,
           "AETHERION_WS_MAX_CLIENTS": "3", "AETHERION_WS_MAX_MESSAGE_BYTES": "2048",
           "AETHERION_TIMEFRAMES": "1s", "AETHERION_SIM_RATE": "40"}
    with server(env, tmp_path / "server.log") as base:
        # CORS: the configured origin may read the API from its page, another may not.
        ok = httpx.options(f"{base}/api/market/status", headers={
            "Origin": DASH, "Access-Control-Request-Method": "GET"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == DASH
        other = httpx.get(f"{base}/api/market/status", headers={"Origin": "http://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        mine = httpx.get(f"{base}/api/market/status", headers={"Origin": DASH})
        assert mine.headers["access-control-allow-origin"] == DASH
        asyncio.run(_websockets(base.replace("http", "ws"), base))
        metrics = httpx.get(f"{base}/metrics").text
        assert 'aetherion_websocket_refused_total{reason="origin"} 1.0' in metrics
        assert 'aetherion_websocket_refused_total{reason="limit"} 1.0' in metrics
    assert "websocket refused" in (tmp_path / "server.log").read_text()


async def _websockets(ws_base: str, base: str) -> None:
    url = f"{ws_base}/ws/market"
    host = base.removeprefix("http://")
    # Origins: another site's page is refused; the configured one, the page's own and
    # non-browser clients (no Origin) are let in.
    async with connect(url, origin="http://evil.example") as ws:  # type: ignore[arg-type]
        assert await close_code(ws) == 1008
    async with connect(url, origin=DASH) as a, \
            connect(url, origin=f"http://{host}") as b, connect(url) as c:  # type: ignore[arg-type]
        assert all([await receives(a), await receives(b), await receives(c)])
        # A fourth connection is over the limit of 3: refused cleanly, the others go on.
        async with connect(url) as d:
            assert await close_code(d) == 1013
        assert all([await receives(a), await receives(b), await receives(c)])
        # A message beyond the size bound closes that client (1009), only that one.
        await c.send("x" * 4096)
        assert await close_code(c) == 1009
        assert all([await receives(a), await receives(b)])
    async with connect(url) as again:  # the slots are free again
        assert await receives(again)


@pytest.mark.parametrize("setting", ["AETHERION_CORS_ORIGINS", "AETHERION_WS_ORIGINS"])
def test_an_origin_must_be_a_url(setting: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "aetherion", "run"], capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", setting: "dash.example"},
                       timeout=30, cwd=tmp_path)
    assert r.returncode == 2 and setting in r.stderr and "scheme://host" in r.stderr


SECRETS = {"key": "K3y-never-shown", "sql": "Sq1-never-shown", "mongo": "M0ngo-never-shown",
           "alpaca": "Alp-never-shown", "alpaca_secret": "AlpS-never-shown"}


def test_secrets_stay_out_of_logs_errors_and_answers(tmp_path: Path) -> None:
    """The API key, exchange credentials and store passwords, with a store that cannot be
    reached (so its errors are logged and answered)."""
    import subprocess
    import sys

    markets = [{"id": "btcusdt", "venue": "crypto", "connector": "simulator",
                "symbol": "BTC/USDT"},
               {"id": "spy", "venue": "us", "connector": "alpaca", "symbol": "SPY",
                "ws_url": "ws://127.0.0.1:9/stream", "api_key_env": "ALP_K",
                "api_secret_env": "ALP_S"}]
    env = {"AETHERION_API_KEY": SECRETS["key"], "AETHERION_MARKETS": json.dumps(markets),
           "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db",
           "ALP_K": SECRETS["alpaca"], "ALP_S": SECRETS["alpaca_secret"],
           "AETHERION_TIMEFRAMES": "1s"}
    log = tmp_path / "server.log"
    answers: list[str] = []
    with server(env, log) as base:
        h = {"X-API-Key": SECRETS["key"]}
        for path in ("/api/market/status", "/readyz", "/metrics", "/api/regime/models",
                     "/api/market/snapshot/spy", "/openapi.json", "/nope"):
            answers.append(httpx.get(f"{base}{path}", headers=h).text)
        answers.append(httpx.get(f"{base}/api/market/status",
                                 headers={"X-API-Key": "wrong"}).text)
    # A store that refuses: the process fails to start, saying why, without the password.
    bad = subprocess.run(
        [sys.executable, "-m", "aetherion", "run", "--port", "1"], capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "AETHERION_LOG_FORMAT": "json",
             "AETHERION_SQL_URL": f"mysql+asyncmy://root:{SECRETS['sql']}@127.0.0.1:9/x",
             "AETHERION_MONGO_URL": f"mongodb://u:{SECRETS['mongo']}@127.0.0.1:9/"})
    assert bad.returncode != 0
    everything = "\n".join([log.read_text(), bad.stdout, bad.stderr, *answers])
    assert "alpaca" in everything and "127.0.0.1:9" in bad.stdout + bad.stderr
    leaked = [name for name, value in SECRETS.items() if value in everything]
    assert not leaked, f"secrets shown: {leaked}"
