"""Decisions in the SQL state store (``decisions``): idempotent writes, restore, queries.

The row id is :func:`~aetherion.decision.model.decision_id` of (market, timeframe, bar time) and
(market, timeframe, bar_time) is unique, so writing a decision again — a retry, a re-delivered
bar, a replay after a restart — stores nothing new, on SQLite and MySQL alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aetherion.decision.model import ACTIONS, POSITION_LEVEL, Decision, PolicyState
from aetherion.storage.schema import decisions as T
from aetherion.storage.sql import insert_ignore

__all__ = ["decision_history", "latest_decisions", "load_policy_state", "write_decisions"]

_CHUNK = 500


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterable[Sequence[Any]]:
    return (items[i:i + n] for i in range(0, len(items), n))


#: (the writing transaction, each row's market) -> the markets that may be written
Owned = Callable[[AsyncConnection, Sequence[str]], Awaitable[set[str]]]


async def write_decisions(engine: AsyncEngine, decisions: Sequence[Decision],
                          owned: Owned | None = None) -> int:
    """Store the decisions whose id is not stored yet; returns how many were new. ``owned``
    (cluster fencing, :meth:`StateStore.owned`) picks, in the writing transaction, the markets
    whose decisions may be written; the others are dropped."""
    rows: dict[str, dict[str, Any]] = {}
    for d in decisions:
        rows.setdefault(d.id, d.model_dump())
    new = 0
    async with engine.begin() as conn:
        if owned is not None:
            mine = await owned(conn, [r["market"] for r in rows.values()])
            rows = {i: r for i, r in rows.items() if r["market"] in mine}
        for ids in _chunks(list(rows)):
            have = set((await conn.execute(select(T.c.id).where(T.c.id.in_(ids)))).scalars())
            fresh = [rows[i] for i in ids if i not in have]
            if fresh:  # still an insert-ignore: a concurrent writer of the same id is harmless
                await conn.execute(insert_ignore(engine, T), fresh)
            new += len(fresh)
    return new


async def load_policy_state(engine: AsyncEngine, market: str,
                            timeframe: str) -> PolicyState | None:
    """The policy state after the newest stored decision of ``market`` on ``timeframe``."""
    key = and_(T.c.market == market, T.c.timeframe == timeframe)
    async with engine.connect() as conn:
        last = (await conn.execute(select(T.c.bar_time, T.c.position_after, T.c.exposure)
                                   .where(key).order_by(T.c.bar_time.desc()).limit(1))).first()
        if last is None:
            return None
        acted = (await conn.execute(select(func.max(T.c.bar_time))
                                    .where(key, T.c.action != "HOLD"))).scalar()
        since = None
        if acted is not None:
            since = (await conn.execute(select(func.count()).select_from(T)
                                        .where(key, T.c.bar_time > acted))).scalar_one()
    return PolicyState(position=last.position_after, last_bar_time=int(last.bar_time),
                       last_action_time=None if acted is None else int(acted),
                       bars_since_action=None if since is None else int(since),
                       exposure=_exposure(last.exposure, last.position_after))


def _exposure(stored: float | None, position: str) -> float:
    """A row's exposure; a row stored before the column existed held its whole position."""
    return float(POSITION_LEVEL[position]) if stored is None else float(stored)


_FIELDS = tuple(Decision.model_fields)


def _decision(row: Any) -> Decision:
    # only the model's fields: a column added to the table later does not break reading
    d = {k: row[k] for k in _FIELDS}
    d["exposure"] = _exposure(d["exposure"], d["position_after"])
    return Decision.model_validate(d)


async def _fetch(conn: AsyncConnection, q: Select[Any]) -> list[Decision]:
    return [_decision(r._mapping) for r in await conn.execute(q)]


async def latest_decisions(engine: AsyncEngine,
                           markets: Iterable[str] | None = None) -> list[Decision]:
    """The newest decision (by bar time) of each market, or of each of ``markets``; by market."""
    newest = select(T.c.market, func.max(T.c.bar_time).label("bar_time")).group_by(T.c.market)
    if markets is not None:
        wanted = list(markets)
        if not wanted:
            return []
        newest = newest.where(T.c.market.in_(wanted))
    sub = newest.subquery()
    q = (select(T).join(sub, and_(T.c.market == sub.c.market, T.c.bar_time == sub.c.bar_time))
         .order_by(T.c.market, T.c.created_at.desc(), T.c.timeframe))
    async with engine.connect() as conn:
        found = await _fetch(conn, q)
    out: dict[str, Decision] = {}
    for d in found:  # two timeframes decided at the same bar time: the latest written
        out.setdefault(d.market, d)
    return list(out.values())


async def decision_history(
    engine: AsyncEngine, market: str | None = None, limit: int = 100,
    since: int | None = None, until: int | None = None, action: str | None = None,
) -> list[Decision]:
    """Decisions newest first (by bar time); ``since``/``until`` bound the bar time inclusively."""
    if limit < 0:
        raise ValueError("limit must be >= 0")
    if action is not None and action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    q = select(T)
    if market is not None:
        q = q.where(T.c.market == market)
    if since is not None:
        q = q.where(T.c.bar_time >= since)
    if until is not None:
        q = q.where(T.c.bar_time <= until)
    if action is not None:
        q = q.where(T.c.action == action)
    q = q.order_by(T.c.bar_time.desc(), T.c.market, T.c.timeframe).limit(limit)
    async with engine.connect() as conn:
        return await _fetch(conn, q)
