"""The dashboard in a real headless Chromium, against the real server as a subprocess."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_e2e
from playwright.sync_api import Browser, Page
from test_e2e import server

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
MARKETS = ["btcusdt", "spy", "nifty"]
SHOWN = "s => { const e = document.querySelector(s); return e && e.textContent !== '–'; }"
# true when every stream's state is (open=true) or is not (open=false) "open"
STREAMS_OPEN = "o => [...document.querySelectorAll('#streams li')].every(li => " \
               "(li.dataset.state === 'open') === o)"


def env_for(tmp_path: Path) -> dict[str, str]:
    return {"AETHERION_TIMEFRAMES": "1s,5s", "AETHERION_SIM_RATE": "40",
            "AETHERION_DECISION_TIMEFRAME": "1s",
            "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db"}


def card(m: str) -> str:
    return f'.market[data-market="{m}"]'


def wait_changed(page: Page, selector: str, attr: str | None, before: Any, ms: int) -> str:
    """Wait until the element's text (or data attribute) differs from ``before``; return it."""
    read = f"e.dataset.{attr}" if attr else "e.textContent"
    page.wait_for_function(
        f"([s, b]) => {{ const e = document.querySelector(s); return e && {read} !== b; }}",
        arg=[selector, before], timeout=ms)
    got = page.eval_on_selector(selector, f"e => {read}")
    assert isinstance(got, str)
    return got


def stored_decision(base: str, market: str, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10  # the state writer flushes in batches
    while True:
        rows = httpx.get(f"{base}/api/decision/history",
                         params={"market": market, "limit": 100}).json()["decisions"]
        found = [d for d in rows if d["id"] == decision_id]
        if found or time.monotonic() > deadline:
            assert found, f"decision {decision_id} shown on the page is not in the store"
            return dict(found[0])
        time.sleep(0.2)


def check_live(page: Page, base: str, since_ms: int) -> None:
    """Each market's price moves within 5 s, candles are drawn and a new one arrives, and a
    decision on a bar after ``since_ms`` is pushed into the feed and is the stored one."""
    for m in MARKETS:
        sel = f"{card(m)} .price"
        page.wait_for_function("s => document.querySelector(s).textContent !== '–'", arg=sel)
        wait_changed(page, sel, None, page.text_content(sel), 5000)
    for m in MARKETS:
        chart = f"{card(m)} .chart"
        page.wait_for_function("s => +document.querySelector(s).dataset.candles >= 5",
                               arg=chart, timeout=5000)
        last = page.eval_on_selector(chart, "e => e.dataset.lastOpen")
        assert int(wait_changed(page, chart, "lastOpen", last, 5000)) > int(last)
    for m in MARKETS:
        # A bar opened after since_ms closes after it: its decision can only come live.
        pushed = page.wait_for_function(
            """([s, t]) => [...document.querySelectorAll(s + ' .feed li[data-source="ws"]')]
                 .find(li => +li.dataset.id.split(':').pop() >= t)""",
            arg=[card(m), since_ms - 500], timeout=10000).as_element()
        assert pushed is not None
        did, action = pushed.get_attribute("data-id"), pushed.get_attribute("data-action")
        assert did is not None and did.startswith(f"{m}:1s:")
        row = stored_decision(base, m, did)
        assert row["action"] == action and action in pushed.inner_text()
        assert page.text_content(f"{card(m)} .regime") in (
            "bull", "bear", "sideways", "crisis", "unknown")
        assert page.text_content(f"{card(m)} .position") in ("long", "flat", "short")


def test_dashboard_live_and_reconnects(browser: Browser, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = test_e2e.free_port()
    # The restarted server must come back on the same address for the page to find it again.
    monkeypatch.setattr(test_e2e, "free_port", lambda: port)
    env, log = env_for(tmp_path), tmp_path / "server.log"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with server(env, log) as base:
        r = httpx.get(f"{base}/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert httpx.get(f"{base}/static/app.js").status_code == 200
        assert httpx.get(f"{base}/static/secret.py").status_code == 404
        started = int(time.time() * 1000)
        page.goto(f"{base}/")
        page.wait_for_function("() => document.querySelectorAll('.market').length === 3",
                               timeout=5000)
        shown = page.eval_on_selector_all(".market", "es => es.map(e => e.dataset.market)")
        assert shown == MARKETS
        check_live(page, base, started)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)
        assert (ARTIFACTS / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not errors, errors  # nothing failed, nothing refused by the page's CSP
    # Server gone: every stream says so. Server back: the page reconnects by itself.
    page.wait_for_function(STREAMS_OPEN, arg=False, timeout=5000)
    assert page.is_visible("#notice")
    with server(env, log) as base:
        restarted = int(time.time() * 1000)
        page.wait_for_function(STREAMS_OPEN, arg=True, timeout=10000)
        check_live(page, base, restarted)
        page.screenshot(path=ARTIFACTS / "dashboard-reconnected.png", full_page=True)
        page.select_option("#timeframe", "5s")  # the chart reloads in the other timeframe
        chart = f"{card('spy')} .chart"
        page.wait_for_function(
            "s => { const d = document.querySelector(s).dataset; "
            "return d.timeframe === '5s' && +d.candles > 0 && +d.lastOpen % 5000 === 0; }",
            arg=chart, timeout=5000)
    # While the server was away the browser logged failed connections; nothing else.
    assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e and "WebSocket" not in e
            and "Failed to load resource" not in e] == [], errors
    page.close()


def test_dashboard_asks_for_the_api_key_once(browser: Browser, tmp_path: Path) -> None:
    """With AETHERION_API_KEY set the page loads (it is open), asks for the key once, and then
    shows live prices; the key is kept for the tab's session, so a reload does not ask again."""
    key = "dash-key-4421"
    with server({**env_for(tmp_path), "AETHERION_API_KEY": key},
                tmp_path / "server.log") as base:
        assert httpx.get(f"{base}/api/market/status").status_code == 401
        context = browser.new_context()
        page = context.new_page()
        asked: list[str] = []

        def answer(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept(key)

        page.on("dialog", answer)
        page.goto(base + "/")
        sel = f"{card('btcusdt')} .price"
        page.wait_for_function(SHOWN, arg=sel,
                               timeout=15000)
        wait_changed(page, sel, None, page.text_content(sel), 5000)
        assert len(asked) == 1 and "API key" in asked[0]
        page.reload()  # the tab keeps the key it was given (sessionStorage)
        page.wait_for_function(SHOWN, arg=sel, timeout=15000)
        assert len(asked) == 1
        context.close()
