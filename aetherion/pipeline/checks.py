"""What is checked before the markets start: connectors and their credentials, the decision
timeframe, and that no market id is switched to another source than its stored data's."""

from __future__ import annotations

import asyncio

from aetherion.config import MarketConfig, Settings
from aetherion.ingest.registry import credentials_problem
from aetherion.storage.state import StateStore, source_changes

__all__ = ["market_source", "preflight"]

PREFLIGHT_STORE_S = 5.0  # how long the start-up check waits to read the recorded sources


def preflight(settings: Settings) -> list[str]:
    """What would stop the markets from starting, one phrase per problem (empty when fine)."""
    problems = [line for m in settings.markets if (line := credentials_problem(m))]
    try:
        settings.decision_config()
    except ValueError as e:
        problems.append(f"bad setting: AETHERION_DECISION_TIMEFRAME: {e}")
    problems.extend(asyncio.run(_changed_sources(settings)))
    return problems


def market_source(m: MarketConfig) -> dict[str, str]:
    """What a market id's stored data belongs to: its connector, symbol and ccxt exchange."""
    source = {"connector": m.connector, "symbol": m.symbol}
    if m.connector == "ccxt":
        source["exchange"] = m.exchange or ""
    return source


async def _changed_sources(settings: Settings) -> list[str]:
    """Markets whose configured source is not the one their stored data came from. A store that
    cannot be read yet (unreachable, not created) is left to the store check that follows and to
    the runtime's start, which checks again."""
    sources = {m.id: market_source(m) for m in settings.markets}
    state: StateStore | None = None
    try:
        async with asyncio.timeout(PREFLIGHT_STORE_S):
            state = await StateStore.open(settings.sql_url, migrate=False)
            return await source_changes(state, sources)
    except Exception:  # said by the store check, or at start
        return []
    finally:
        if state is not None:
            await state.close()
