"""SQL helpers shared by the stores: engines, and idempotent writes on SQLite and MySQL alike."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Table, case
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from aetherion.storage.migrate import ensure_sqlite_dir

__all__ = ["finite", "insert_ignore", "make_engine", "upsert", "upsert_if"]


def finite(x: float | None) -> float | None:
    """NaN and infinities are stored as null: MySQL and JSON have no place for them."""
    return x if x is None or math.isfinite(x) else None


def make_engine(url: str) -> AsyncEngine:
    ensure_sqlite_dir(url)
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 30})
    return create_async_engine(url, pool_pre_ping=True, pool_recycle=3600)


def insert_ignore(engine: AsyncEngine, table: Table) -> Insert:
    """An INSERT that leaves an existing row with the same unique key untouched."""
    if engine.dialect.name == "mysql":
        pk = next(iter(table.primary_key.columns))
        return mysql.insert(table).on_duplicate_key_update({pk.name: pk})
    return sqlite.insert(table).on_conflict_do_nothing()


def upsert(engine: AsyncEngine, table: Table, key: list[str]) -> Insert:
    """An INSERT that replaces the other columns of an existing row with the same ``key``."""
    cols = [c.name for c in table.columns if c.name not in key]
    if engine.dialect.name == "mysql":
        ins = mysql.insert(table)
        return ins.on_duplicate_key_update({c: ins.inserted[c] for c in cols})
    sq = sqlite.insert(table)
    return sq.on_conflict_do_update(index_elements=key, set_={c: sq.excluded[c] for c in cols})


def upsert_if(
    engine: AsyncEngine, table: Table, key: list[str], guard: str
) -> Insert:
    """An INSERT that replaces an existing row only when the new ``guard`` value is >= the old.

    (Bars: a retried or out-of-order older revision never overwrites a newer one.)
    """
    cols = [c.name for c in table.columns if c.name not in key and c.name != guard]
    if engine.dialect.name == "mysql":
        ins = mysql.insert(table)
        newer = table.c[guard] <= ins.inserted[guard]
        # MySQL applies the assignments left to right: the guard column goes last.
        sets: dict[str, Any] = {c: case((newer, ins.inserted[c]), else_=table.c[c]) for c in cols}
        sets[guard] = case((newer, ins.inserted[guard]), else_=table.c[guard])
        return ins.on_duplicate_key_update(sets)
    sq = sqlite.insert(table)
    return sq.on_conflict_do_update(
        index_elements=key,
        set_={c: sq.excluded[c] for c in [*cols, guard]},
        where=table.c[guard] <= sq.excluded[guard],
    )
