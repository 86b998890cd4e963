"""The SQL state store: ``system_state`` (checkpoints, engine state), regimes and transitions.

Decisions and model versions live in the same database; their stages own their queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from aetherion.domain import ModelVersion, RegimeUpdate, Transition
from aetherion.storage import schema as s
from aetherion.storage.migrate import upgrade_engine
from aetherion.storage.retention import Plan, purge_sql
from aetherion.storage.sql import finite, insert_ignore, make_engine, upsert

__all__ = ["Holder", "StateStore", "describe_source", "record_sources", "source_changes",
           "source_key"]

log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _model_key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["market"], row["timeframe"], row["version"]


#: (owner, lease token) under which this instance holds a market, or None: see StateStore.holder
Holder = Callable[[str], tuple[str, int] | None]


class StateStore:
    """State kept across restarts. Satisfies :class:`aetherion.ingest.base.Checkpoints`.

    **Fencing** (cluster mode): with ``holder`` set, a market's regimes, transitions, model
    versions and decisions are written only while its ``market_fences`` row is this instance's
    (owner, token), checked in the transaction that writes them (under a shared row lock on
    MySQL, so a new owner's :meth:`fence` waits for a write under way and every later one is
    refused). Refused rows are dropped, counted in ``fenced`` and logged, never retried."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._set_state = upsert(engine, s.system_state, ["key"])
        self._set_fence = upsert(engine, s.market_fences, ["market"])
        self.holder: Holder | None = None
        self.fenced = 0

    async def fence(self, market: str, owner: str, token: int) -> None:
        """Take ``market``'s state for (``owner``, ``token``): from now on only that holder's
        writes of it are stored. Called by an instance that has just won the market's lease."""
        async with self.engine.begin() as conn:
            await conn.execute(self._set_fence, {"market": market, "owner": owner,
                                                 "token": token, "updated_at": _now_ms()})

    async def owned(self, conn: AsyncConnection, row_markets: Sequence[str]) -> set[str]:
        """Of the markets of the rows about to be written (one entry a row), those whose rows
        ``conn``'s transaction may write: all of them without a holder. The rows of the others
        are counted in ``fenced``."""
        markets = set(row_markets)
        if self.holder is None or not markets:
            return markets
        f = s.market_fences
        q = select(f.c.market, f.c.owner, f.c.token).where(
            f.c.market.in_(sorted(markets))).with_for_update(read=True)
        fences = {r.market: (r.owner, int(r.token)) for r in await conn.execute(q)}
        mine = {m for m in markets if (h := self.holder(m)) is not None and fences.get(m) == h}
        for m in markets - mine:
            log.warning("state writes refused: the market is fenced for another holder",
                        market=m, fence=fences.get(m), ours=self.holder(m))
        self.fenced += sum(m not in mine for m in row_markets)
        return mine

    @classmethod
    async def open(cls, url: str, migrate: bool = True) -> StateStore:
        engine = make_engine(url)
        if migrate:
            await upgrade_engine(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def purge(self, cutoffs: Plan) -> dict[str, int]:
        return await purge_sql(self.engine, cutoffs)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    async def get_state(self, key: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(s.system_state.c.value).where(s.system_state.c.key == key))).first()
        return None if row is None else dict(row[0])

    async def set_state(self, key: str, value: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self._set_state, {"key": key, "value": value,
                                                 "updated_at": _now_ms()})

    async def write_regimes(self, updates: list[RegimeUpdate]) -> None:
        if not updates:
            return
        now = _now_ms()
        rows = [{
            "market": u.market, "timeframe": u.timeframe, "open_time": u.open_time,
            "regime_raw": u.regime_raw, "regime": u.regime, "confidence": finite(u.confidence),
            "confidence_raw": finite(u.confidence_raw),
            "probs": {k: finite(v) for k, v in u.probs.items()},
            "model_version": u.model_version, "strategy": u.strategy,
            "contributions": dict(u.contributions) if u.contributions else None,
            "created_at": now,
        } for u in updates]
        async with self.engine.begin() as conn:
            mine = await self.owned(conn, [u.market for u in updates])
            if rows := [r for r in rows if r["market"] in mine]:
                await conn.execute(insert_ignore(self.engine, s.regime_state), rows)

    async def write_transitions(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        now = _now_ms()
        rows = [{
            "market": t.market, "timeframe": t.timeframe, "open_time": t.open_time,
            "from_regime": t.from_regime, "to_regime": t.to_regime,
            "confidence": finite(t.confidence),
            "from_strategy": t.from_strategy, "to_strategy": t.to_strategy, "cause": t.cause,
            "created_at": now,
        } for t in transitions]
        async with self.engine.begin() as conn:
            mine = await self.owned(conn, [t.market for t in transitions])
            if rows := [r for r in rows if r["market"] in mine]:
                await conn.execute(insert_ignore(self.engine, s.regime_transitions), rows)

    async def write_models(self, versions: list[ModelVersion]) -> None:
        """Every attempt, rejected or active, with its parameters. A version already stored is
        left as it is (a retried write); one stored with another model is logged as the bug
        it is (version numbers never repeat: see :meth:`highest_versions`)."""
        rows = [{
            "market": v.market, "timeframe": v.timeframe, "version": v.version,
            "effective_from": v.effective_from, "trained_at": v.trained_at,
            "train_start": v.train_start, "train_end": v.train_end, "n_obs": v.n_obs,
            "loglik": finite(v.loglik), "params": v.params, "status": v.status,
            "reason": v.reason[:255],
        } for v in versions]
        if not rows:
            return
        t = s.model_versions
        key = (t.c.market, t.c.timeframe, t.c.version)
        same = (t.c.trained_at, t.c.effective_from, t.c.status)
        q = select(*key, *same).where(tuple_(*key).in_([_model_key(r) for r in rows]))
        async with self.engine.begin() as conn:
            mine = await self.owned(conn, [v.market for v in versions])
            if not (rows := [r for r in rows if r["market"] in mine]):
                return
            await conn.execute(insert_ignore(self.engine, t), rows)
            stored = {tuple(r[:3]): tuple(r[3:]) for r in await conn.execute(q)}
        for r in rows:
            if stored.get(_model_key(r)) != (r["trained_at"], r["effective_from"], r["status"]):
                log.error("model version taken by another model; this one is not stored",
                          market=r["market"], timeframe=r["timeframe"], version=r["version"],
                          status=r["status"], trained_at=r["trained_at"])

    async def highest_versions(self, market: str) -> dict[str, int]:
        """The highest stored model version of ``market`` per timeframe, rejected ones
        included: where a restarted engine numbers on from."""
        t = s.model_versions
        q = (select(t.c.timeframe, func.max(t.c.version)).where(t.c.market == market)
             .group_by(t.c.timeframe))
        async with self.engine.connect() as conn:
            return {tf: int(v) for tf, v in await conn.execute(q)}

    async def models(self, market: str | None = None, timeframe: str | None = None,
                     limit: int = 100) -> list[ModelVersion]:
        """Model versions, newest first."""
        t = s.model_versions
        q = select(t)
        if market is not None:
            q = q.where(t.c.market == market)
        if timeframe is not None:
            q = q.where(t.c.timeframe == timeframe)
        q = q.order_by(t.c.trained_at.desc(), t.c.version.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(q))
        return [ModelVersion(**{k: r._mapping[k] for k in ModelVersion.__slots__})
                for r in rows]

    async def latest_models(self, market: str) -> dict[str, ModelVersion]:
        """The newest active model per timeframe (what a restart reuses)."""
        t = s.model_versions
        q = (select(t).where(t.c.market == market, t.c.status == "active")
             .order_by(t.c.version.desc()))
        out: dict[str, ModelVersion] = {}
        async with self.engine.connect() as conn:
            for r in await conn.execute(q):
                m = r._mapping
                if m["timeframe"] not in out:
                    out[m["timeframe"]] = ModelVersion(
                        **{k: m[k] for k in ModelVersion.__slots__})
        return out

    async def regime_history(
        self, market: str, timeframe: str, limit: int,
        since: int | None = None, until: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored regime rows, newest first."""
        t = s.regime_state
        q = select(t).where(t.c.market == market, t.c.timeframe == timeframe)
        if since is not None:
            q = q.where(t.c.open_time >= since)
        if until is not None:
            q = q.where(t.c.open_time <= until)
        q = q.order_by(t.c.open_time.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    async def latest_regimes(self, market: str) -> dict[str, dict[str, Any]]:
        """The newest stored regime row of ``market`` per timeframe (and ``fused``)."""
        t = s.regime_state
        newest = (select(t.c.timeframe, func.max(t.c.open_time).label("open_time"))
                  .where(t.c.market == market).group_by(t.c.timeframe).subquery())
        q = select(t).join(newest, (t.c.timeframe == newest.c.timeframe)
                           & (t.c.open_time == newest.c.open_time)).where(t.c.market == market)
        async with self.engine.connect() as conn:
            return {r.timeframe: dict(r._mapping) for r in await conn.execute(q)}

    async def transitions(
        self, market: str, limit: int, since: int | None = None, until: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored regime transitions of ``market`` (all timeframes), newest first."""
        t = s.regime_transitions
        q = select(t).where(t.c.market == market)
        if since is not None:
            q = q.where(t.c.open_time >= since)
        if until is not None:
            q = q.where(t.c.open_time <= until)
        q = q.order_by(t.c.open_time.desc(), t.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]


# ---- where a market's data came from -------------------------------------------------------


def source_key(market: str) -> str:
    """The ``system_state`` key holding the source (connector, symbol, ccxt exchange) whose data
    is stored under market id ``market``."""
    return f"source:{market}"


def describe_source(source: Mapping[str, Any]) -> str:
    """``simulator BTC/USDT``, ``ccxt kraken BTC/USD``."""
    return " ".join(str(source[k]) for k in ("connector", "exchange", "symbol") if source.get(k))


async def source_changes(state: StateStore, sources: Mapping[str, dict[str, str]]) -> list[str]:
    """One phrase per market id whose stored data came from another source than ``sources``
    gives it now (a market never recorded, such as a store written before the record was kept,
    is not a change)."""
    out = []
    for market, new in sources.items():
        old = await state.get_state(source_key(market))
        if old is not None and old != new:
            out.append(
                f"market {market}: its stored data (bars, models, position, checkpoints) came "
                f"from {describe_source(old)}, now configured as {describe_source(new)}; "
                f"give the new source another market id, or configure {describe_source(old)} "
                f"again")
    return out


async def record_sources(state: StateStore, sources: Mapping[str, dict[str, str]]) -> None:
    """Record, at every start, where each market id's data comes from."""
    for market, source in sources.items():
        await state.set_state(source_key(market), source)
