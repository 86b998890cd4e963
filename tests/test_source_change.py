"""Issue 14 item 4: a market id's stored data belongs to its source (connector, symbol, ccxt
exchange). A changed source stops start-up with one line; the same source starts normally."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_e2e import free_port, server

from aetherion.config import MarketConfig
from aetherion.pipeline import market_source
from aetherion.storage.state import StateStore, record_sources, source_changes, source_key

SIM = {"id": "btcusdt", "venue": "crypto", "connector": "simulator", "symbol": "BTC/USDT"}


def _env(db: Path, market: dict[str, Any]) -> dict[str, str]:
    return {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{db}", "AETHERION_TIMEFRAMES": "1s,5s",
            "AETHERION_SIM_RATE": "20", "AETHERION_MARKETS": json.dumps([market])}


async def _recorded(url: str, market: str) -> dict[str, Any] | None:
    state = await StateStore.open(url, migrate=False)
    try:
        return await state.get_state(source_key(market))
    finally:
        await state.close()


@pytest.mark.e2e
def test_changed_source_refuses_start_with_one_line(tmp_path: Path) -> None:
    db, log = tmp_path / "s.db", tmp_path / "server.log"
    url = f"sqlite+aiosqlite:///{db}"
    with server(_env(db, SIM), log) as base:  # the simulator's data under btcusdt
        status = httpx.get(f"{base}/api/market/status").json()
        assert [m["id"] for m in status["markets"]] == ["btcusdt"]
    assert asyncio.run(_recorded(url, "btcusdt")) == {"connector": "simulator",
                                                       "symbol": "BTC/USDT"}

    port = free_port()  # nothing listens there: Binance must never be needed to refuse
    binance = {**SIM, "connector": "binance", "ws_url": f"ws://127.0.0.1:{port}/stream",
               "rest_url": f"http://127.0.0.1:{port}/api/v3"}
    env = {**os.environ, "AETHERION_LOG_FORMAT": "json", **_env(db, binance)}
    r = subprocess.run([sys.executable, "-m", "aetherion", "run", "--port", str(free_port())],
                       env=env, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = lines[0]
    assert line.startswith("aetherion: market btcusdt:"), line
    assert "simulator BTC/USDT" in line and "binance BTC/USDT" in line, line
    assert "another market id" in line, line
    # The refusal recorded nothing: the store still says the simulator.
    assert asyncio.run(_recorded(url, "btcusdt"))["connector"] == "simulator"  # type: ignore[index]

    with server(_env(db, SIM), log) as base:  # the same source again: starts as before
        status = httpx.get(f"{base}/api/market/status").json()
        assert [m["id"] for m in status["markets"]] == ["btcusdt"]
    assert log.read_text().count('"market started"') == 2


async def test_source_changes_names_connector_symbol_and_exchange(tmp_path: Path) -> None:
    state = await StateStore.open(f"sqlite+aiosqlite:///{tmp_path}/u.db")
    try:
        kraken = MarketConfig(id="btc", venue="crypto", connector="ccxt", symbol="BTC/USD",
                              exchange="kraken")
        sources = {"btc": market_source(kraken)}
        assert await source_changes(state, sources) == []  # nothing recorded yet
        await record_sources(state, sources)
        assert await source_changes(state, sources) == []  # the same source
        for changed in ({"exchange": "bitstamp"}, {"symbol": "BTC/EUR"},
                        {"connector": "simulator", "exchange": None}):
            other = kraken.model_copy(update=changed)
            got = await source_changes(state, {"btc": market_source(other)})
            assert len(got) == 1 and got[0].startswith("market btc:"), got
            assert "ccxt kraken BTC/USD" in got[0], got
        assert await source_changes(state, {"eth": market_source(kraken)}) == []  # another id
    finally:
        await state.close()
