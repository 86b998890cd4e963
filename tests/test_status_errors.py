"""What an operator sees when a venue cannot be reached, and ``/docs`` with no network.

End to end: the real server as a subprocess with markets pointed at a closed port and at a host
that does not resolve: ``/api/market/status`` gives each one's error text, its time and the
attempts so far (never a credential), and the dashboard shows the error on the market's card.
``/docs`` loads Swagger UI from the app itself, in a browser that may reach nothing else.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser
from test_dashboard import ARTIFACTS
from test_e2e import free_port, server

from aetherion.ingest.base import ConnectorStats, describe

KEY = "St4tus-key-never-shown"
ALPACA_KEY, ALPACA_SECRET = "Alp-status-key", "AlpS-status-secret"


# ---- the error text ------------------------------------------------------------------------


def test_describe_names_the_kind_the_url_and_the_root_cause() -> None:
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except OSError as e:
            raise ConnectionError("binance GET http://nonexistent.invalid/api/v3/ping") from e
    except ConnectionError as e:
        text = describe(e)
    assert text == ("DNS lookup failed: binance GET http://nonexistent.invalid/api/v3/ping: "
                    "[Errno -2] Name or service not known")
    assert describe(TimeoutError(), "ws://h/stream") == "timed out: ws://h/stream"


def test_an_error_loses_url_queries_and_credential_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_STATUS_TOKEN", "tok-sekrit-42")
    stats = ConnectorStats(secret_envs=("TEST_STATUS_TOKEN", "TEST_STATUS_UNSET"))
    text = stats.on_error("GET wss://h/ws?api_key=k1&access_token=tok-sekrit-42 said "
                          "'bad token tok-sekrit-42' " + "x" * 500)
    assert text.startswith("GET wss://h/ws said 'bad token ***' x")
    assert "tok-sekrit-42" not in text and "api_key" not in text and len(text) == 300
    assert stats.reconnects == 1 and stats.state == "reconnecting"
    stats.on_error("the venue said so", state=None)  # the connection goes on
    assert stats.reconnects == 1 and stats.state == "reconnecting"
    stats.on_error("unknown symbol", state="failed")
    assert stats.reconnects == 1 and stats.state == "failed"
    assert stats.as_dict()["last_error"] == "unknown symbol"


# ---- /api/market/status and the dashboard ----------------------------------------------------


def status(base: str) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{base}/api/market/status", headers={"X-API-Key": KEY}).json()
    return {m["id"]: m for m in body["markets"]}


@pytest.mark.e2e
def test_unreachable_markets_show_their_errors(browser: Browser, tmp_path: Path) -> None:
    port = free_port()  # bound, then released: nothing listens there
    markets = [
        {"id": "btcusdt", "venue": "crypto", "connector": "simulator", "symbol": "BTC/USDT"},
        {"id": "binref", "venue": "crypto", "connector": "binance", "symbol": "BTC/USDT",
         "ws_url": f"ws://127.0.0.1:{port}/stream", "rest_url": f"http://127.0.0.1:{port}/api/v3"},
        {"id": "ccxtdns", "venue": "crypto", "connector": "ccxt", "exchange": "binance",
         "symbol": "BTC/USDT", "ws_url": "ws://nonexistent.invalid/stream",
         "rest_url": "http://nonexistent.invalid/api/v3"},
        {"id": "spy", "venue": "us", "connector": "alpaca", "symbol": "SPY",
         "ws_url": f"ws://127.0.0.1:{port}/v2/iex", "api_key_env": "ALP_K",
         "api_secret_env": "ALP_S"}]
    env = {"AETHERION_API_KEY": KEY, "AETHERION_MARKETS": json.dumps(markets),
           "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db",
           "AETHERION_TIMEFRAMES": "1s", "ALP_K": ALPACA_KEY, "ALP_S": ALPACA_SECRET}
    started = int(time.time() * 1000)
    with server(env, tmp_path / "server.log") as base:
        deadline = time.monotonic() + 20
        while True:
            got = status(base)
            failing = [got[m] for m in ("binref", "ccxtdns", "spy")]
            if all(m["reconnects"] >= 2 for m in failing) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        raw = httpx.get(f"{base}/api/market/status", headers={"X-API-Key": KEY}).text
        shown = show_dashboard(browser, base)
    now = int(time.time() * 1000)
    assert got["binref"]["last_error"].startswith(
        f"connection refused: binance GET http://127.0.0.1:{port}/api/v3/exchangeInfo: ")
    assert got["ccxtdns"]["last_error"].startswith(
        "DNS lookup failed: binance GET http://nonexistent.invalid/api/v3/exchangeInfo: ")
    assert got["spy"]["last_error"].startswith(
        f"connection refused: ws://127.0.0.1:{port}/v2/iex: ")
    for m in failing:
        assert m["state"] in ("connecting", "reconnecting") and m["reconnects"] >= 2, m
        assert started <= m["last_error_at"] <= now, m
    assert got["btcusdt"]["last_error"] is None and got["btcusdt"]["last_error_at"] is None
    for secret in (KEY, ALPACA_KEY, ALPACA_SECRET):
        assert secret not in raw
    # Each failing card shows its error; the simulated market's shows none.
    assert shown["btcusdt"] is None
    for m in failing:
        text = shown[m["id"]]
        assert text is not None and text.startswith("error ") and "reconnects: " in text, text
        assert text.endswith(m["last_error"]), (text, m["last_error"])


def show_dashboard(browser: Browser, base: str) -> dict[str, str | None]:
    """Each card's error line as the page shows it (``None``: hidden)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("dialog", lambda d: d.accept(KEY))
    page.goto(f"{base}/")
    page.wait_for_function(
        "() => document.querySelectorAll('.market').length === 4 && "
        "document.querySelectorAll('.market .error:not([hidden])').length === 3", timeout=15000)
    shown = page.eval_on_selector_all(
        ".market", "es => Object.fromEntries(es.map(e => [e.dataset.market, "
        "e.querySelector('.error').hidden ? null : e.querySelector('.error').textContent]))")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-errors.png", full_page=True)
    page.close()
    assert isinstance(shown, dict)
    return shown


# ---- /docs with no network -------------------------------------------------------------------


def assets_of(html: str) -> list[str]:
    return re.findall(r'<(?:script|link)[^>]*?(?:src|href)="([^"]+)"', html)


@pytest.mark.e2e
@pytest.mark.parametrize("key", [None, KEY])
def test_docs_are_served_by_the_app(browser: Browser, tmp_path: Path, key: str | None) -> None:
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
           "AETHERION_TIMEFRAMES": "1s"} | ({"AETHERION_API_KEY": key} if key else {})
    headers = {"X-API-Key": key} if key else {}
    with server(env, tmp_path / "server.log") as base:
        if key:  # as before: the page and the schema need the key, like every endpoint
            assert httpx.get(f"{base}/docs").status_code == 401
            assert httpx.get(f"{base}/openapi.json").status_code == 401
        page = httpx.get(f"{base}/docs", headers=headers)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = assets_of(page.text)
        assert {a.rsplit(".", 1)[-1] for a in assets} >= {"js", "css"}, assets
        for url in assets:  # same origin, and open like the dashboard's files (no data in them)
            assert url.startswith("/") and not url.startswith("//"), url
            got = httpx.get(f"{base}{url}")
            assert got.status_code == 200 and len(got.content) > 1000, url
        assert "AETHERION" in render_offline(browser, base, headers)


def render_offline(browser: Browser, base: str, headers: dict[str, str]) -> str:
    """Swagger UI's title, in a browser that may reach nothing but the app."""
    context = browser.new_context(extra_http_headers=headers)
    page = context.new_page()
    elsewhere: list[str] = []

    def only_the_app(route: Any) -> None:
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_app)
    page.goto(f"{base}/docs")
    title = page.wait_for_selector(".swagger-ui .info .title", timeout=15000)
    assert title is not None
    text = title.text_content() or ""
    context.close()
    assert not elsewhere, elsewhere
    return text
