"""``/metrics`` on a fresh start: every labelled counter is listed with its known label values
at 0, so ``rate(...)`` answers 0 instead of "no data" before the first event."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_e2e import free_port, server

pytestmark = pytest.mark.e2e


def counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every ``*_total`` sample: (name, sorted labels) → value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) if family.type == "counter"
            for s in family.samples if s.name.endswith("_total")}


def test_labelled_counters_exist_at_zero_from_the_start(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: no trade, bar or decision will come
    env = {"AETHERION_SQL_URL": f"sqlite+aiosqlite:///{tmp_path}/m.db",
           "AETHERION_TIMEFRAMES": "1s,5s",
           "AETHERION_MARKETS": json.dumps([
               {"id": "quiet", "venue": "crypto", "connector": "binance", "symbol": "BTC/USDT",
                "ws_url": f"ws://127.0.0.1:{port}/stream",
                "rest_url": f"http://127.0.0.1:{port}/api/v3"}])}
    with server(env, tmp_path / "server.log") as base:
        got = counters(httpx.get(f"{base}/metrics").text)

    def m(**labels: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"market": "quiet", **labels}.items()))

    expected = [("aetherion_ticks_total", m()), ("aetherion_regime_updates_total", m()),
                ("aetherion_connector_reconnects_total", m())]
    expected += [(name, m(timeframe=tf)) for tf in ("1s", "5s")
                 for name in ("aetherion_bars_closed_total", "aetherion_features_total")]
    expected += [("aetherion_decisions_total", m(action=a)) for a in ("BUY", "SELL", "HOLD")]
    expected += [("aetherion_gaps_total", m(kind=k)) for k in ("detected", "filled")]
    expected += [("aetherion_websocket_refused_total", (("reason", r),))
                 for r in ("origin", "limit")]
    expected += [("aetherion_store_errors_total", (("store", s),)) for s in ("market", "state")]
    expected += [(name, (("stream", s),)) for s in ("market", "regime", "decision")
                 for name in ("aetherion_websocket_messages_total",
                              "aetherion_websocket_dropped_clients_total")]
    missing = [key for key in expected if key not in got]
    assert not missing, f"not listed on a fresh start: {missing}"
    # The connection to the closed port fails: that attempt is counted (connector errors are
    # counted from the first failure), so only the reconnect counter may be above 0.
    attempts = ("aetherion_connector_reconnects_total", m())
    assert got[attempts] >= 0
    zero = [key for key in expected if key != attempts]
    assert {key: got[key] for key in zero} == dict.fromkeys(zero, 0.0)
    # and nothing else is labelled that the list above does not know of
    assert sorted(set(got) - set(expected)) == []
