"""The API in-process: ``TestClient(create_app(...))`` as a context manager runs the lifespan
(stores, simulated markets, warm-up), so each endpoint is checked against a real runtime
without a subprocess. The socket-level end-to-end checks are in ``test_e2e.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from aetherion.api.app import create_app
from aetherion.config import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("api")
    settings = Settings(sql_url=f"sqlite+aiosqlite:///{home}/a.db",  # type: ignore[call-arg]
                        timeframes="1s,5s", history_bars=120, sim_rate=200.0,
                        regime_min_bars=100, regime_window=100)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)  # the spill journal (var/spool) goes there
        with TestClient(create_app(settings)) as c:
            yield c


def test_status_names_every_market_with_its_connector_state(client: TestClient) -> None:
    body = client.get("/api/market/status").json()
    assert [m["id"] for m in body["markets"]] == ["btcusdt", "spy", "nifty"]
    assert {m["state"] for m in body["markets"]} <= {"connecting", "live"}
    assert body["stores"]["sql"] == "sqlite+aiosqlite"
    assert {"market", "state"} <= set(body["stores"])  # the writers' backlogs


def test_snapshot_and_stored_candles_come_from_the_running_markets(client: TestClient) -> None:
    deadline = time.monotonic() + 10
    while (snap := client.get("/api/market/snapshot/spy").json())["price"] is None:
        assert time.monotonic() < deadline, "no trade reached the snapshot"
        time.sleep(0.1)
    assert snap["market"] == "spy" and set(snap["bars"]) == {"1s", "5s"}
    while len((candles := client.get("/api/market/candles/spy",  # warm-up bars, stored
                                     params={"timeframe": "5s"}).json())["candles"]) < 100:
        assert time.monotonic() < deadline, "the warm-up bars were not stored"
        time.sleep(0.1)
    assert candles["timeframe"] == "5s"


@pytest.mark.parametrize(("params", "says"), [
    ({"since": "9" * 25}, "since: '9999999999999999999999999' is beyond 64-bit epoch"),
    ({"until": "yesterday"}, "until: 'yesterday' is neither epoch milliseconds nor an ISO"),
    ({"since": "2", "until": "1"}, "since must not be after until"),
    ({"timeframe": "1h"}, "timeframe '1h' is not configured; configured: 1s, 5s"),
])
def test_bad_history_parameters_are_422_with_one_line(
    client: TestClient, params: dict[str, str], says: str,
) -> None:
    r = client.get("/api/market/candles/spy", params=params)
    assert r.status_code == 422 and says in r.json()["detail"]


def test_an_unknown_market_is_404_with_the_known_ones(client: TestClient) -> None:
    r = client.get("/api/regime/eurusd")
    assert r.status_code == 404
    assert r.json() == {"detail": "unknown market 'eurusd'", "known_markets":
                        ["btcusdt", "spy", "nifty"]}


def test_market_stream_starts_with_a_snapshot_then_sends_live_events(client: TestClient) -> None:
    with client.websocket_connect("/ws/market?markets=btcusdt") as ws:
        first = ws.receive_json()
        assert (first["type"], first["market"]) == ("snapshot", "btcusdt")
        kinds = {ws.receive_json()["type"] for _ in range(30)}
        ws.close()  # and let the handler see it go before the client's portal is torn down
        time.sleep(0.3)
    assert kinds & {"tick", "ticks"} and kinds <= {"tick", "ticks", "bar", "features", "book"}


def test_transitions_are_served_from_the_store(client: TestClient) -> None:
    r = client.get("/api/regime/transitions/btcusdt", params={"limit": 5})
    assert r.status_code == 200 and r.json()["market"] == "btcusdt"
    rows = r.json()["transitions"]
    assert all({"timeframe", "from_regime", "to_regime", "cause"} <= set(t) for t in rows)
    assert client.get("/api/regime/transitions/nope").status_code == 404


def test_readyz_is_ready_once_markets_run(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["problems"] == []
