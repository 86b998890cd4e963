"""Retention: rows older than their horizon are deleted by a periodic purge.

Ticks and order-book snapshots are raw and large: kept for ``AETHERION_RETENTION_TICKS`` and
``AETHERION_RETENTION_BOOKS``; candles, features, regimes, transitions and decisions for
``AETHERION_RETENTION_HISTORY``; model versions always (a replay of a stored run needs them). The
purge deletes by each row's event time (``ts``, ``open_time``, ``bar_time``), the same way in
SQL and in MongoDB, so a changed setting applies at the next purge.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from aetherion.config import Settings
from aetherion.storage import schema as s

__all__ = ["MARKET_TABLES", "Plan", "STATE_TABLES", "plan", "purge_sql"]

#: table or collection -> (time column, which horizon)
MARKET_TABLES: dict[str, tuple[str, str]] = {
    "market_ticks": ("ts", "ticks"),
    **{f"{v}_orderbook": ("ts", "books") for v in s.BOOK_TABLES},
    "market_candles": ("open_time", "history"),
    "market_features": ("open_time", "history"),
}
STATE_TABLES: dict[str, tuple[str, str]] = {
    "regime_state": ("open_time", "history"),
    "regime_transitions": ("open_time", "history"),
    "decisions": ("bar_time", "history"),
}
#: table -> (time column, delete rows before this epoch ms)
Plan = dict[str, tuple[str, int]]


def plan(settings: Settings, now_ms: int, tables: dict[str, tuple[str, str]]) -> Plan:
    keep = {"ticks": settings.retention_ticks, "books": settings.retention_books,
            "history": settings.retention_history}
    return {t: (col, now_ms - keep[kind]) for t, (col, kind) in tables.items() if keep[kind]}


async def purge_sql(engine: AsyncEngine, cutoffs: Plan) -> dict[str, int]:
    """Delete what is older than each table's cutoff; rows deleted per table."""
    out: dict[str, int] = {}
    for name, (col, before) in cutoffs.items():
        table = s.metadata.tables[name]
        async with engine.begin() as conn:
            r: Any = await conn.execute(delete(table).where(table.c[col] < before))
        out[name] = max(int(r.rowcount or 0), 0)
    return out
