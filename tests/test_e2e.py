"""End to end: the real server as a subprocess on a free port, over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aetherion.storage.schema import decisions

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: dict[str, str], log: Path, cwd: Path | None = None) -> Iterator[str]:
    """``cwd``: where the server keeps ``var/`` (its spill journal), when not the checkout."""
    port = free_port()
    full = {**os.environ, "AETHERION_LOG_FORMAT": "json", **env}
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aetherion", "run", "--port", str(port)],
            env=full, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, f"server exit status {rc}:\n{log.read_text()[-3000:]}"


async def collect(base: str, markets: str, seconds: float,
                  stream: str = "market") -> list[dict[str, Any]]:
    url = base.replace("http", "ws") + f"/ws/{stream}" + (f"?markets={markets}" if markets else "")
    out: list[dict[str, Any]] = []
    async with connect(url) as ws:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
            except TimeoutError:
                break
    return out


async def stored_decisions(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            q = select(decisions).where(decisions.c.id.in_(ids))
            return {r.id: dict(r._mapping) for r in await conn.execute(q)}
    finally:
        await engine.dispose()


def run_e2e(env: dict[str, str], tmp_path: Path) -> None:
    env = {"AETHERION_TIMEFRAMES": "1s,5s", "AETHERION_SIM_RATE": "40",
           "AETHERION_DECISION_TIMEFRAME": "1s", **env}
    log = tmp_path / "server.log"
    with server(env, log) as base:
        msgs = asyncio.run(collect(base, "btcusdt,nifty", 4.5))
        assert msgs[0]["type"] == "snapshot" and msgs[1]["type"] == "snapshot"
        assert {m["market"] for m in msgs[:2]} == {"btcusdt", "nifty"}
        assert {m["market"] for m in msgs} == {"btcusdt", "nifty"}  # spy filtered out
        ticks = [dict(t, market=m["market"]) for m in msgs
                 for t in ([m] if m["type"] == "tick" else m.get("ticks", []))]
        assert len(ticks) > 40 and all(t["side"] in ("buy", "sell") for t in ticks)
        for market in ("btcusdt", "nifty"):  # every trade once, in order (`{ts}-{seq}` ids)
            seqs = [int(t["trade_id"].split("-")[1]) for t in ticks if t["market"] == market]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        closed = [m for m in msgs if m["type"] == "bar" and m["closed"]
                  and m["market"] == "btcusdt" and m["timeframe"] == "1s"]
        assert len(closed) >= 2
        assert any(m["type"] == "bar" and not m["closed"] for m in msgs)
        assert any(m["type"] == "features" for m in msgs)
        deadline = time.monotonic() + 15  # the writer flushes in batches, off the hot path
        while True:
            got = httpx.get(f"{base}/api/market/candles/btcusdt",
                            params={"timeframe": "1s", "limit": 50}).json()
            stored = {c["open_time"]: c for c in got["candles"]}
            if all(b["open_time"] in stored for b in closed) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        opens = [c["open_time"] for c in got["candles"]]
        assert opens == sorted(opens, reverse=True)
        for bar in closed:
            row = stored[bar["open_time"]]
            for k in ("open", "high", "low", "close", "volume", "buy_volume", "trade_count"):
                assert row[k] == pytest.approx(bar[k], rel=1e-12), k
        five = httpx.get(f"{base}/api/market/candles/btcusdt", params={"timeframe": "5s"}).json()
        assert all(c["timeframe"] == "5s" and c["open_time"] % 5000 == 0 for c in five["candles"])

        for tf in ("1s", "5s"):  # history warm-up: ATR and volatility from the start
            feats = httpx.get(f"{base}/api/market/features/spy", params={"timeframe": tf}).json()
            assert len(feats["features"]) == 100
            assert all(f["atr"] > 0 and f["volatility"] > 0 for f in feats["features"])
        metrics = httpx.get(f"{base}/metrics").text
        for name in ("aetherion_ticks_total", "aetherion_bars_closed_total",
                     "aetherion_features_total", "aetherion_regime_updates_total",
                     "aetherion_decisions_total", "aetherion_connector_state",
                     "aetherion_connector_reconnects_total", "aetherion_gaps_total",
                     "aetherion_latency_seconds_bucket", "aetherion_store_backlog",
                     "aetherion_store_errors_total", "aetherion_websocket_clients",
                     "aetherion_websocket_messages_total",
                     "aetherion_websocket_dropped_clients_total",
                     "aetherion_event_loop_lag_seconds_bucket"):
            assert f"\n{name}" in metrics, name
        assert 'aetherion_connector_state{market="spy",state="live"} 1.0' in metrics
        ticks = [line for line in metrics.splitlines()
                 if line.startswith('aetherion_ticks_total{market="btcusdt"}')]
        assert ticks and float(ticks[0].split()[-1]) > 40
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        snap = httpx.get(f"{base}/api/market/snapshot/btcusdt").json()
        assert snap["price"] > 0 and snap["bid"] < snap["ask"] and set(snap["bars"]) == {"1s", "5s"}
        book = httpx.get(f"{base}/api/market/orderbook/nifty", params={"depth": 5}).json()
        assert len(book["bids"]) == 5 and book["bids"][0][0] > book["bids"][1][0]
        trades = httpx.get(f"{base}/api/market/trades/spy", params={"limit": 10}).json()
        assert len(trades["trades"]) == 10
        status = httpx.get(f"{base}/api/market/status").json()
        assert [m["id"] for m in status["markets"]] == ["btcusdt", "spy", "nifty"]
        assert all(m["state"] == "live" and m["msg_rate"] > 0 for m in status["markets"])

        r = httpx.get(f"{base}/api/market/candles/nope")
        assert r.status_code == 404 and r.json()["known_markets"] == ["btcusdt", "spy", "nifty"]
        assert httpx.get(f"{base}/api/market/candles/spy", params={"timeframe": "7m"}
                         ).status_code == 422
        assert httpx.get(f"{base}/api/market/trades/spy", params={"since": "yesterday"}
                         ).status_code == 422
        assert httpx.get(f"{base}/api/market/trades/spy", params={"limit": 0}).status_code == 422
        # regimes and decisions: from history warm-up, models exist within seconds of start
        regimes = asyncio.run(collect(base, "", 3, "regime"))
        fused = [m for m in regimes if m["type"] == "regime" and m["timeframe"] == "fused"]
        assert {m["market"] for m in fused} == {"btcusdt", "spy", "nifty"}
        bad = [m for m in fused if not (m["regime"] in ("bull", "bear", "sideways", "crisis",
                                                         "unknown") and 0 <= m["confidence"] <= 1)]
        assert not bad, [(m["regime"], m["confidence"], m.get("probs")) for m in bad]
        raw = [m for m in regimes if m["type"] == "regime" and m["regime_raw"] != "unknown"]
        assert {m["timeframe"] for m in raw} >= {"1s", "fused"}
        assert all(m["confidence_raw"] == m["probs"][m["regime_raw"]] for m in raw)
        models = httpx.get(f"{base}/api/regime/models", params={"market": "spy"}).json()
        assert {m["timeframe"] for m in models["models"]} == {"1s", "5s"}
        hist = httpx.get(f"{base}/api/regime/btcusdt", params={"limit": 5}).json()
        assert len(hist["regimes"]) == 5 and hist["current"]["strategy"] in (
            None, "trend_long", "trend_short", "mean_reversion", "risk_off")
        assert {"regime_raw", "confidence_raw"} <= set(hist["current"])
        one = httpx.get(f"{base}/api/regime/btcusdt", params={"timeframe": "1s"}).json()
        assert one["regimes"]
        for row in one["regimes"]:  # as the engine made them, through the store
            assert row["confidence_raw"] == row["probs"][row["regime_raw"]], row
        latest = httpx.get(f"{base}/api/decision/latest").json()["decisions"]
        assert {d["market"] for d in latest} == {"btcusdt", "spy", "nifty"}
        assert all(d["action"] in ("BUY", "SELL", "HOLD") and d["rule"] for d in latest)
        level = {"long": 1, "flat": 0, "short": -1}
        assert all((d["exposure"] > 0) - (d["exposure"] < 0) == level[d["position_after"]]
                   and (d["exposure"] * 4).is_integer() for d in latest)  # sized in quarters
        assert httpx.get(f"{base}/api/decision/history",
                         params={"market": "spy", "limit": 3}).json()["decisions"]
        # decisions streamed == decisions stored (read back from the database itself)
        streamed = [m for m in asyncio.run(collect(base, "btcusdt,spy", 3.5, "decision"))
                    if m["type"] == "decision"]
        assert len(streamed) >= 4 and {m["market"] for m in streamed} == {"btcusdt", "spy"}
        assert len({m["id"] for m in streamed}) == len(streamed)  # never broadcast twice
        time.sleep(1.0)
        rows = asyncio.run(stored_decisions(env["AETHERION_SQL_URL"], [m["id"] for m in streamed]))
        for m in streamed:
            row = rows[m["id"]]
            for k in ("action", "rule", "position_before", "position_after", "bar_time",
                      "regime", "strategy", "price", "exposure"):
                assert row[k] == m[k], k
        before = stored
    # Restart: the history is still there, and the new process adds to it.
    with server(env, log) as base:
        got = httpx.get(f"{base}/api/market/candles/btcusdt",
                        params={"timeframe": "1s", "limit": 5000}).json()
        after = {c["open_time"]: c for c in got["candles"]}
        assert set(before) <= set(after)
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(before) / 1000))
        since = httpx.get(f"{base}/api/market/candles/btcusdt",
                          params={"timeframe": "1s", "since": iso, "until": max(before)}).json()
        assert {c["open_time"] for c in since["candles"]} >= set(before)
    assert "regime model reused" in log.read_text()


def test_embedded_default(tmp_path: Path) -> None:
    run_e2e({"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db"}, tmp_path)


def test_mysql_and_mongo(tmp_path: Path, mysql_url: str, mongo_url: str) -> None:
    run_e2e({"AETHERION_SQL_URL": mysql_url, "AETHERION_MONGO_URL": mongo_url}, tmp_path)


@pytest.mark.parametrize(("name", "value", "expect"), [
    ("AETHERION_PORT", "eighty", "AETHERION_PORT"),
    ("AETHERION_TIMEFRAMES", "1m,7m", "AETHERION_TIMEFRAMES"),
    ("AETHERION_MARKETS", '[{"id": "a b", "venue": "crypto", "connector": "simulator",'
     ' "symbol": "X"}]', "AETHERION_MARKETS[0][id]"),
    ("AETHERION_SQL_URL", "postgres://x", "AETHERION_SQL_URL"),
    ("AETHERION_DECISION_TIMEFRAME", "4h", "AETHERION_DECISION_TIMEFRAME"),
    ("AETHERION_MARKETS", '[{"id": "aapl", "venue": "us", "connector": "alpaca", "symbol": "AAPL",'
     ' "api_key_env": "NO_SUCH_KEY_1", "api_secret_env": "NO_SUCH_KEY_2"}]', "NO_SUCH_KEY_1"),
    ("AETHERION_MARKETS", '[{"id": "nifty", "venue": "nse", "connector": "kite", "symbol": "NIFTY",'
     ' "instrument_token": 256265}]', "market nifty: connector 'kite'"),
    ("AETHERION_MARKETS", '[{"id": "b", "venue": "crypto", "connector": "nope", "symbol": "X"}]',
     "AETHERION_MARKETS[0][connector]"),
])
def test_bad_setting_is_one_line(name: str, value: str, expect: str) -> None:
    r = subprocess.run([sys.executable, "-m", "aetherion", "run"], env={**os.environ, name: value},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_readyz_names_a_market_that_cannot_connect(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/r.db",
           "AETHERION_MARKETS": json.dumps([
               {"id": "dead", "venue": "crypto", "connector": "binance", "symbol": "BTC/USDT",
                "ws_url": f"ws://127.0.0.1:{port}/stream",
                "rest_url": f"http://127.0.0.1:{port}/api/v3"}])}
    with server(env, tmp_path / "server.log") as base:
        deadline = time.monotonic() + 20
        while True:
            r = httpx.get(f"{base}/readyz")
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.status_code == 503
        assert any(p.startswith("market dead is") for p in r.json()["problems"])
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive all the same


def test_api_key_guards_rest_and_websockets(tmp_path: Path) -> None:
    key = "k-" + "x" * 30
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/k.db", "AETHERION_API_KEY": key,
           "AETHERION_TIMEFRAMES": "1s,5s"}
    with server(env, tmp_path / "server.log") as base:
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/").status_code == 200  # the page asks for the key itself
        for path in ("/api/market/status", "/api/decision/latest", "/metrics", "/readyz"):
            r = httpx.get(f"{base}{path}")
            assert r.status_code == 401 and key not in r.text, path
        assert httpx.get(f"{base}/api/market/status", headers={"X-API-Key": "wrong"}
                         ).status_code == 401
        assert httpx.get(f"{base}/api/market/status", headers={"X-API-Key": key}
                         ).status_code == 200
        assert httpx.get(f"{base}/api/market/status",
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200
        ws = base.replace("http", "ws") + "/ws/market"

        async def refused() -> int | None:
            async with connect(ws) as c:
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(c.recv(), 5)
                return info.value.rcvd.code if info.value.rcvd else None

        async def allowed(url: str, **kw: Any) -> str:
            async with connect(url, **kw) as c:
                return str(json.loads(await asyncio.wait_for(c.recv(), 5))["type"])

        assert asyncio.run(refused()) == 1008
        assert asyncio.run(allowed(f"{ws}?token={key}")) == "snapshot"
        assert asyncio.run(allowed(ws, additional_headers={"X-API-Key": key})) == "snapshot"
    assert key not in (tmp_path / "server.log").read_text()
