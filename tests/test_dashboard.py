"""The dashboard in a real headless Chromium, against the real server as a subprocess.

``python tests/test_dashboard.py [SECONDS]`` runs the server on simulated markets for SECONDS
(default 60) and saves the README's screenshot, ``docs/dashboard.png``.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import test_e2e
from playwright.sync_api import Browser, BrowserContext, Page
from test_e2e import server

from aetherion.report import DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS, performance

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
MARKETS = ["btcusdt", "spy", "nifty"]
TIMEFRAMES = ["1s", "5s"]
SHOWN = "s => { const e = document.querySelector(s); return e && e.textContent !== '–'; }"
# true when every stream's state is (open=true) or is not (open=false) "open"
STREAMS_OPEN = "o => [...document.querySelectorAll('#streams li')].every(li => " \
               "(li.dataset.state === 'open') === o)"
ZONE = "Asia/Tokyo"  # UTC+9: local time is never UTC by accident
PROBABILITY = re.compile(r"(\d+(\.\d+)?|>99\.9)\s?%")


def env_for(tmp_path: Path) -> dict[str, str]:
    """Simulated markets with 1s and 5s bars, decisions on 1s and quick regime models; the
    simulated regimes change every 20 s or so, so the timeline has something to show."""
    return {"AETHERION_TIMEFRAMES": ",".join(TIMEFRAMES), "AETHERION_SIM_RATE": "40",
            "AETHERION_SIM_REGIME_SECONDS": "20", "AETHERION_DECISION_TIMEFRAME": "1s",
            "AETHERION_REGIME_RETRAIN_BARS": "10",
            "AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/a.db"}


def card(m: str) -> str:
    return f'[data-testid="market-{m}"]'


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


@contextmanager
def loopback_only(context: BrowserContext, base: str) -> Iterator[list[str]]:
    """Every request the pages of ``context`` make that is not to ``base``'s host is recorded
    (and refused): the list must stay empty."""
    host = urlsplit(base).hostname
    elsewhere: list[str] = []

    def only_the_app(route: Any) -> None:
        if urlsplit(route.request.url).hostname == host:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_app)
    context.on("page", lambda p: p.on("websocket", lambda ws: None if urlsplit(
        ws.url).hostname == host else elsewhere.append(ws.url)))
    yield elsewhere


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


def check_live(page: Page, base: str, since_ms: int, markets: list[str] = MARKETS) -> None:
    """Each market's price moves within 5 s, candles are drawn and a new one arrives, and a
    decision on a bar after ``since_ms`` is pushed into the feed and is the stored one."""
    for m in markets:
        sel = f"{card(m)} .price"
        page.wait_for_function(SHOWN, arg=sel, timeout=10000)
        wait_changed(page, sel, None, page.text_content(sel), 5000)
    for m in markets:
        chart = f"{card(m)} .chart"
        page.wait_for_function("s => +document.querySelector(s).dataset.candles >= 5",
                               arg=chart, timeout=5000)
        last = page.eval_on_selector(chart, "e => e.dataset.lastOpen")
        assert int(wait_changed(page, chart, "lastOpen", last, 5000)) > int(last)
    for m in markets:
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


def check_trader_view(page: Page) -> None:
    """Issue 17's elements: each visible for every market, each updating; every timeframe's
    regime and the fused one with a probability; decisions with reasons in words."""
    for m in MARKETS:
        for name in ("volume", "pnl", "depth", "timeline"):
            assert page.is_visible(tid(f"{name}-{m}")), f"{name}-{m}"
        # updating: the volume of a newer bar, a newer book, the band over more bars
        vol = tid(f"volume-{m}")
        page.wait_for_function("s => /^Vol \\S+\\s+buy .+ sell /.test("
                               "document.querySelector(s).textContent)", arg=vol, timeout=5000)
        wait_changed(page, vol, "openTime", page.get_attribute(vol, "data-open-time"), 5000)
        depth = tid(f"depth-{m}")
        page.wait_for_function("s => document.querySelector(s).dataset.ts", arg=depth,
                               timeout=5000)
        wait_changed(page, depth, "ts", page.get_attribute(depth, "data-ts"), 5000)
        band = tid(f"timeline-{m}")
        page.wait_for_function("s => +document.querySelector(s).dataset.bars >= 5", arg=band,
                               timeout=15000)
        pnl = tid(f"pnl-{m}")
        page.wait_for_function("s => +document.querySelector(s).dataset.bars >= 2", arg=pnl,
                               timeout=15000)
        wait_changed(page, pnl, "lastBar", page.get_attribute(pnl, "data-last-bar"), 15000)
        text = page.inner_text(pnl)
        assert re.search(r"since \d\d:\d\d\s+[-+]?\d+\.\d\d% vs hold [-+]?\d+\.\d\d%", text), text
    reasons = page.eval_on_selector_all(tid("decision-reason"), "es => es.map(e => e.textContent)")
    assert any(len(r.split()) >= 3 for r in reasons), reasons
    check_regimes(page, ["1s", "5s"])


def check_regimes(page: Page, timeframes: list[str], ms: int = 5000) -> None:
    """Each timeframe's regime and the fused one show a probability (of the stable label, or
    of the most probable one while the stability rule has not followed it); the fused one has
    each timeframe's share of the vote."""
    for m in MARKETS:
        for tf in [*timeframes, "fused"]:
            row = tid(f"regime-{m}-{tf}")
            assert page.is_visible(row), row
            page.wait_for_function(
                "([s, re]) => new RegExp(re).test(document.querySelector(s + ' .p').textContent)",
                arg=[row, PROBABILITY.pattern], timeout=ms)
            label = page.text_content(f"{row} .label")  # unknown: the fused vote is undecided
            assert label in ("bull", "bear", "sideways", "crisis", "unknown"), (row, label)
        weights = page.eval_on_selector_all(f"{card(m)} .regimes td.weight",
                                            "es => es.map(e => e.textContent)")
        assert sum(w.endswith("%") for w in weights) >= len(timeframes), weights


def check_pnl_is_the_reports(base: str, m: str) -> None:
    """The P&L endpoint's books are the replay report's on the stored bars and decisions."""
    got = httpx.get(f"{base}/api/decision/performance/{m}").json()
    window = {"since": got["first_bar"], "until": got["last_bar"], "limit": 5000}
    bars = httpx.get(f"{base}/api/market/candles/{m}",
                     params={**window, "timeframe": got["timeframe"]}).json()["candles"]
    decided = httpx.get(f"{base}/api/decision/history",
                        params={**window, "market": m}).json()["decisions"]
    before = httpx.get(f"{base}/api/decision/history", params={
        "market": m, "until": got["first_bar"] - 1, "limit": 1}).json()["decisions"]
    exposure = {d["bar_time"]: d["exposure"] for d in decided}
    held, rows = before[0]["exposure"] if before else 0.0, []
    for b in reversed(bars):
        held = exposure.get(b["open_time"], held)
        rows.append({**b, "exposure": held})
    assert len(rows) == got["bars"] >= 2
    expected = performance(rows, DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS)  # the report's own
    for book in ("decisions", "buy_and_hold"):
        assert got["performance"][book] == pytest.approx(expected[book]), book


def check_numbers_and_times(page: Page) -> None:
    """Prices in each market's precision (the simulator's: cents), no float noise; times in
    the browser's zone, UTC on hover."""
    for m in MARKETS:
        for sel in (".price", ".bid", ".ask", ".feed li .px"):
            text = page.text_content(f"{card(m)} {sel}") or ""
            assert re.fullmatch(r"\s*\d{1,3}(,\d{3})*\.\d\d\s*", text), (m, sel, text)
    stamp = page.eval_on_selector(f"{card('spy')} .feed time",
                                  "e => [e.textContent, e.title, e.dateTime]")
    utc = datetime.fromisoformat(stamp[2].replace("Z", "+00:00"))
    assert stamp[0] == utc.astimezone(ZoneInfo(ZONE)).strftime("%H:%M:%S"), stamp
    assert stamp[1] == utc.strftime("%Y-%m-%d %H:%M:%S UTC"), stamp
    assert ZONE in (page.text_content("#tz") or "")


def band_and_transitions(page: Page, m: str) -> tuple[int, list[str]]:
    start = page.get_attribute(tid(f"timeline-{m}"), "data-from")
    times = page.eval_on_selector_all(f"{card(m)} .transitions li",
                                      "es => es.map(e => e.dataset.openTime)")
    return int(start or 0), times


def check_reload_restores(page: Page) -> None:
    """The timeline and the transitions come back from REST after a reload. The fused label
    follows the simulated regimes only through the stability rule, so the first transition
    can take a while: the wait is long, and it is the last check."""
    page.wait_for_function(
        "ms => ms.some(m => document.querySelector("
        "`[data-testid='market-${m}'] .transitions li`))", arg=MARKETS, timeout=45000)
    before = {m: band_and_transitions(page, m) for m in MARKETS}
    reloaded = int(time.time() * 1000)
    page.reload()
    for m in MARKETS:
        page.wait_for_function("s => document.querySelector(s)?.dataset.from", arg=tid(
            f"timeline-{m}"), timeout=10000)
        start, times = band_and_transitions(page, m)
        assert start <= before[m][0] < reloaded - 5000, (m, start, before[m])
        assert set(before[m][1]) <= set(times) or len(times) == 6, (m, before[m], times)
    assert any(band_and_transitions(page, m)[1] for m in MARKETS)


def check_docs(page: Page, base: str) -> None:
    """/docs renders its operations with no network but the app."""
    page.goto(f"{base}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=15000)
    ops = page.eval_on_selector_all(".opblock-summary-path", "es => es.map(e => e.textContent)")
    assert any("/api/decision/performance/" in o for o in ops), ops


def models_trained(base: str, timeframe: str) -> None:
    """Wait until every market's regime model of ``timeframe`` is stored (a restart restores
    it, and it then labels the first bar that closes)."""
    deadline = time.monotonic() + 30
    for m in MARKETS:
        while not any(v["status"] == "active" for v in httpx.get(
                f"{base}/api/regime/models", params={"market": m, "timeframe": timeframe},
                timeout=5).json()["models"]):
            assert time.monotonic() < deadline, f"no {timeframe} model for {m}"
            time.sleep(0.5)


def check_assets(base: str) -> None:
    r = httpx.get(f"{base}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("app.js", "vendor/lightweight-charts.standalone.production.js",
                  "vendor/LICENSE", "vendor/NOTICE"):
        assert httpx.get(f"{base}/static/{asset}").status_code == 200, asset
    for bad in ("secret.py", "vendor/..%2Fapp.js", "vendor/x.js", "docs%2F..%2Fapp.js"):
        assert httpx.get(f"{base}/static/{bad}").status_code == 404, bad


def test_dashboard_for_a_trader(browser: Browser, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh start fills the page in; the server goes away and comes back (the page says so
    and reconnects by itself); then every element of issue 17 is checked on the live page,
    and no request of the page or of /docs leaves 127.0.0.1."""
    port = test_e2e.free_port()
    # The restarted server must come back on the same address for the page to find it again.
    monkeypatch.setattr(test_e2e, "free_port", lambda: port)
    env, log = env_for(tmp_path), tmp_path / "server.log"
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, locale="en-US",
                                  timezone_id=ZONE)
    errors: list[str] = []
    with loopback_only(context, f"http://127.0.0.1:{port}") as elsewhere:
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        with server(env, log) as base:
            check_assets(base)
            page.goto(f"{base}/")
            page.wait_for_function("() => document.querySelectorAll('.market').length === 3",
                                   timeout=5000)
            shown = page.eval_on_selector_all(".market", "es => es.map(e => e.dataset.testid)")
            assert shown == [f"market-{m}" for m in MARKETS]
            for m in MARKETS:
                page.wait_for_function("s => +document.querySelector(s).dataset.candles > 0",
                                       arg=f"{card(m)} .chart", timeout=5000)
            assert not errors, errors  # nothing failed, nothing refused by the page's CSP
            models_trained(base, TIMEFRAMES[-1])
        # Server gone: every stream says so. Server back: the page reconnects by itself.
        page.wait_for_function(STREAMS_OPEN, arg=False, timeout=5000)
        assert page.is_visible("#notice")
        with server(env, log) as base:
            restarted = int(time.time() * 1000)
            page.wait_for_function(STREAMS_OPEN, arg=True, timeout=10000)
            check_live(page, base, restarted)
            check_trader_view(page)
            check_numbers_and_times(page)
            for m in MARKETS:
                check_pnl_is_the_reports(base, m)
            check_docs(context.new_page(), base)
            page.select_option("#timeframe", "5s")  # the chart reloads in the other timeframe
            page.wait_for_function(
                "s => { const d = document.querySelector(s).dataset; "
                "return d.timeframe === '5s' && +d.candles > 0 && +d.lastOpen % 5000 === 0; }",
                arg=f"{card('spy')} .chart", timeout=5000)
            # the restored 5s models label the first 5s bar that closes after the restart
            check_regimes(page, TIMEFRAMES, 10000)
            check_reload_restores(page)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)
    assert not elsewhere, elsewhere
    # While the server was away the browser logged failed connections; nothing else.
    assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e and "WebSocket" not in e
            and "Failed to load resource" not in e] == [], errors
    context.close()


def test_dashboard_asks_for_the_api_key_once(browser: Browser, tmp_path: Path) -> None:
    """With AETHERION_API_KEY set the page loads (it is open), asks for the key once, and then
    shows live prices; the key is kept for the tab's session, so a reload does not ask again."""
    key = "dash-key-4421"
    with server({**env_for(tmp_path), "AETHERION_TIMEFRAMES": "1s", "AETHERION_API_KEY": key},
                tmp_path / "server.log") as base:
        assert httpx.get(f"{base}/api/market/status").status_code == 401
        assert httpx.get(f"{base}/api/decision/performance/spy").status_code == 401
        context = browser.new_context()
        page = context.new_page()
        asked: list[str] = []

        def answer(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept(key)

        page.on("dialog", answer)
        page.goto(base + "/")
        sel = f"{card('btcusdt')} .price"
        page.wait_for_function(SHOWN, arg=sel, timeout=15000)
        wait_changed(page, sel, None, page.text_content(sel), 5000)
        assert len(asked) == 1 and "API key" in asked[0]
        page.reload()  # the tab keeps the key it was given (sessionStorage)
        page.wait_for_function(SHOWN, arg=sel, timeout=15000)
        assert len(asked) == 1
        context.close()


def screenshot(path: Path, seconds: float) -> None:
    """The README's picture: the default markets after ``seconds`` of simulated trading, and
    once every timeframe's regime is shown (the first 5s one comes within seconds)."""
    import tempfile

    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        with server(env_for(Path(tmp)), Path(tmp) / "server.log") as base:
            page = b.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{base}/")
            time.sleep(seconds)
            check_regimes(page, TIMEFRAMES, 120_000)
            page.screenshot(path=path, full_page=True)
        b.close()


if __name__ == "__main__":
    screenshot(ROOT / "docs" / "dashboard.png", float(sys.argv[1]) if len(sys.argv) > 1 else 60)
