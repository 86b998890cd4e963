"""The connector registry: one table that settings validation, the start-up check and the
runtime read, and that says of each connector what its class really does."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aetherion.config import MarketConfig, Settings
from aetherion.ingest.base import Connector, Resumable
from aetherion.ingest.live import LiveConnector
from aetherion.ingest.registry import REGISTRY, build_connector, credentials_problem, names
from aetherion.ingest.simulator import SimulatorConnector


def market(connector: str, **kw: object) -> MarketConfig:
    return MarketConfig.model_validate({"id": "m", "venue": "crypto", "connector": connector,
                                        "symbol": "BTC/USDT", "exchange": "binance",
                                        "instrument_token": 256265, **kw})


def test_settings_accept_exactly_the_registered_names() -> None:
    assert names() == ["alpaca", "binance", "ccxt", "kite", "simulator"]
    for name in names():
        assert market(name).connector == name
    with pytest.raises(ValidationError) as e:
        market("nope")
    assert "no connector 'nope'; available: alpaca, binance, ccxt, kite, simulator" in str(e.value)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_capabilities_say_what_the_class_does(name: str) -> None:
    spec = REGISTRY[name]
    cls = spec.load()
    assert cls.name == name
    assert spec.can("history") == (cls.history is not Connector.history)
    assert spec.can("resume") == issubclass(cls, Resumable)
    checkpoints = issubclass(cls, LiveConnector) and cls.checkpoint_prefix is not None
    assert spec.can("checkpoint") == checkpoints


def test_build_connector_derives_the_connector_config_from_the_settings() -> None:
    s = Settings(sim_seed=11, sim_rate=123.0, sim_regime_seconds=60.0)
    m = market("simulator")
    conn = build_connector(m, s, None)
    assert isinstance(conn, SimulatorConnector) and conn.market is m
    assert (conn.config.seed, conn.config.rate, conn.config.regime_seconds) == (11, 123.0, 60.0)
    for name in names():
        built = build_connector(market(name), s, None)
        assert type(built) is REGISTRY[name].load() and built.market.connector == name


def test_credentials_come_from_the_registry_row(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("simulator", "binance", "ccxt"):
        assert credentials_problem(market(name)) is None
    monkeypatch.delenv("NO_SUCH_KEY_1", raising=False)
    line = credentials_problem(market("alpaca", api_key_env="NO_SUCH_KEY_1",
                                      api_secret_env="NO_SUCH_KEY_1"))
    assert line == ("market m: connector 'alpaca' needs the environment variable(s) "
                    "NO_SUCH_KEY_1, NO_SUCH_KEY_1 set to the Alpaca API key and secret")
    assert credentials_problem(market("kite", instrument_token=None)) == (
        "market m: connector 'kite' needs instrument_token "
        "(the Kite instrument token of 'BTC/USDT')")
