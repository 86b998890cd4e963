"""Every connector by name: its class, what a market needs to start it, what it can do.

Settings validation (:class:`~aetherion.config.MarketConfig` accepts only :func:`names`), the
start-up check (:func:`credentials_problem`) and the runtime (:func:`build_connector`) all read
this one table; adding a venue is a module in ``aetherion/ingest/`` and a row here. Classes are
imported when first built, so naming a connector costs nothing until a market uses it.

A row (:class:`ConnectorSpec`):

- ``env``: the market's fields that name environment variables which must be set to start
  (``api_key_env`` …), and ``env_holds``, what they hold, for the error line;
- ``needs``: other market fields that must be set, each with what it is;
- ``settings``: the connector's config fields taken from the global settings, as
  ``(config field, Settings field)``; everything else of its config is the market and defaults;
- ``capabilities``: ``history`` (closed bars from the venue to warm up), ``backfill`` (trades
  missed while away are fetched), ``book`` (order books), ``checkpoint`` (a position kept across
  restarts), ``resume`` (made-up prices that go on from a stored one, see
  :class:`~aetherion.ingest.base.Resumable`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from aetherion.config import MarketConfig, Settings
    from aetherion.ingest.base import Checkpoints, Connector

__all__ = [
    "REGISTRY", "Capability", "ConnectorSpec", "build_connector", "credentials_problem", "names"]

Capability = Literal["history", "backfill", "book", "checkpoint", "resume"]


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    name: str
    target: str  # "module:Class"
    capabilities: frozenset[Capability] = frozenset()
    env: tuple[str, ...] = ()
    env_holds: str = ""
    needs: tuple[tuple[str, str], ...] = ()  # (market field, what it is; {symbol!r} filled in)
    settings: tuple[tuple[str, str], ...] = ()

    def load(self) -> type[Connector]:
        module, _, cls = self.target.partition(":")
        loaded: type[Connector] = getattr(importlib.import_module(module), cls)
        return loaded

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


REGISTRY: dict[str, ConnectorSpec] = {s.name: s for s in (
    ConnectorSpec("simulator", "aetherion.ingest.simulator:SimulatorConnector",
                  frozenset({"history", "book", "resume"}),
                  settings=(("seed", "sim_seed"), ("regime_seconds", "sim_regime_seconds"),
                            ("rate", "sim_rate"))),
    ConnectorSpec("binance", "aetherion.ingest.binance:BinanceConnector",
                  frozenset({"history", "backfill", "book", "checkpoint"})),
    ConnectorSpec("ccxt", "aetherion.ingest.ccxt_pro:CcxtConnector",
                  frozenset({"backfill", "book", "checkpoint"})),
    ConnectorSpec("alpaca", "aetherion.ingest.alpaca:AlpacaConnector", frozenset({"book"}),
                  env=("api_key_env", "api_secret_env"),
                  env_holds="the Alpaca API key and secret"),
    ConnectorSpec("kite", "aetherion.ingest.kite:KiteConnector",
                  frozenset({"book", "checkpoint"}),
                  env=("api_key_env", "access_token_env"),
                  env_holds="the Kite API key and access token",
                  needs=(("instrument_token", "the Kite instrument token of {symbol!r}"),)),
)}


def names() -> list[str]:
    return sorted(REGISTRY)


def credentials_problem(market: MarketConfig) -> str | None:
    """The one line that says what the market's connector is missing to start (a market field,
    the name of a credential variable, or its value in the environment), or ``None``."""
    spec = REGISTRY[market.connector]
    head = f"market {market.id}: connector {spec.name!r} needs"
    for field, what in spec.needs:
        if getattr(market, field) is None:
            return f"{head} {field} ({what.format(symbol=market.symbol)})"
    named = {field: getattr(market, field) for field in spec.env}
    unnamed = [field for field, env in named.items() if not env]
    if unnamed:
        return (f"{head} {' and '.join(unnamed)} "
                f"(names of the environment variables holding {spec.env_holds})")
    unset = [env for env in named.values() if not os.environ.get(env)]
    if unset:
        return f"{head} the environment variable(s) {', '.join(unset)} set to {spec.env_holds}"
    return None


def build_connector(market: MarketConfig, settings: Settings,
                    checkpoints: Checkpoints | None) -> Connector:
    """The market's connector, built from its own frozen config: the market, the settings its
    row names, and the connector's defaults."""
    spec = REGISTRY[market.connector]
    cls = spec.load()
    options = {field: getattr(settings, name) for field, name in spec.settings}
    return cls(cls.config_type(market=market, **options), checkpoints)
