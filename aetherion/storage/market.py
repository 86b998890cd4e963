"""The market store: ticks, candles, features and order books, in MongoDB or in SQL tables.

Both implementations keep the same collections/tables and unique keys, so every write is
idempotent: a tick by ``(market, trade_id)``, a bar by ``(market, timeframe, open_time)`` with the
revision rule (a write replaces the stored bar only if its revision is >= the stored one),
features by their bar's key (first write wins), a book by ``(market, ts, sequence)``. Queries
answer newest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVarTuple

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, UpdateOne
from pymongo.errors import BulkWriteError
from sqlalchemy import ColumnElement, Executable, RowMapping, Select, Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from aetherion.config import Settings
from aetherion.domain import Bar, BookSnapshot, Features, Tick
from aetherion.storage import schema as s
from aetherion.storage.retention import Plan, purge_sql
from aetherion.storage.sql import finite, insert_ignore, upsert_if

__all__ = [
    "MarketStore", "MongoMarketStore", "SqlMarketStore", "bar_row", "book_row", "feature_row",
    "open_market_store", "tick_row",
]

DUPLICATE_KEY = 11000

#: a row or document as written
Doc = dict[str, object]
#: a row or document as read back (the drivers' values are untyped)
Stored = RowMapping | Mapping[str, Any]
_Ts = TypeVarTuple("_Ts")


class MarketStore(Protocol):
    name: str

    async def write_ticks(self, ticks: list[Tick]) -> None: ...
    async def write_bars(self, bars: list[Bar], keep_existing: bool = False) -> None: ...
    async def write_features(self, rows: list[Features]) -> None: ...
    async def write_books(self, venue: str, books: list[BookSnapshot]) -> None: ...
    async def ticks(self, market: str, limit: int, since: int | None = None,
                    until: int | None = None) -> list[Tick]: ...
    async def bars(self, market: str, timeframe: str, limit: int, since: int | None = None,
                   until: int | None = None) -> list[Bar]: ...
    async def features(self, market: str, timeframe: str, limit: int,
                       since: int | None = None, until: int | None = None) -> list[Features]: ...
    async def latest_book(self, venue: str, market: str) -> BookSnapshot | None: ...
    async def purge(self, cutoffs: Plan) -> dict[str, int]: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


# ---- rows <-> events (shared by both implementations) ---------------------------------------

def tick_row(t: Tick) -> Doc:
    return {"market": t.market, "trade_id": t.trade_id or f"{t.ts}:{t.price}:{t.size}",
            "ts": t.ts, "recv_ns": t.recv_ns, "price": t.price, "size": t.size, "side": t.side,
            "side_inferred": t.side_inferred}


def _tick(r: Stored) -> Tick:
    return Tick(r["market"], r["ts"], r["price"], r["size"], r["side"], r["trade_id"],
                r["recv_ns"], bool(r["side_inferred"]))


def bar_row(b: Bar) -> Doc:
    return {"market": b.market, "timeframe": b.timeframe, "open_time": b.open_time,
            "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume,
            "buy_volume": b.buy_volume, "sell_volume": b.sell_volume,
            "trade_count": b.trade_count, "closed": b.closed, "revision": b.revision,
            "sided": b.sided, "first_ts": b.first_ts, "last_ts": b.last_ts}


def _bar(r: Stored) -> Bar:
    return Bar(r["market"], r["timeframe"], r["open_time"], r["open"], r["high"], r["low"],
               r["close"], r["volume"], r["buy_volume"], r["sell_volume"], r["trade_count"],
               bool(r["closed"]), r["revision"], r["first_ts"], r["last_ts"], bool(r["sided"]))


def feature_row(f: Features) -> Doc:
    row: Doc = {"market": f.market, "timeframe": f.timeframe, "open_time": f.open_time,
                "extra": {k: finite(v) for k, v in f.extra.items()}}
    for c in s.FEATURE_COLUMNS:
        row[c] = finite(getattr(f, c))
    return row


def _features(r: Stored) -> Features:
    return Features(market=r["market"], timeframe=r["timeframe"], open_time=r["open_time"],
                    extra=dict(r["extra"] or {}), **{c: r[c] for c in s.FEATURE_COLUMNS})


def book_row(b: BookSnapshot) -> Doc:
    return {"market": b.market, "ts": b.ts, "sequence": b.sequence or 0, "state": b.state,
            "bids": [list(x) for x in b.bids], "asks": [list(x) for x in b.asks]}


def _book(r: Stored) -> BookSnapshot:
    return BookSnapshot(r["market"], r["ts"], tuple(tuple(x) for x in r["bids"]),
                        tuple(tuple(x) for x in r["asks"]), r["sequence"] or None, r["state"])


def _venue(venue: str) -> str:
    if venue not in s.BOOK_TABLES:
        raise ValueError(f"unknown venue {venue!r}; expected one of {sorted(s.BOOK_TABLES)}")
    return venue


def _window(q: Select[*_Ts], col: ColumnElement[int], since: int | None,
            until: int | None) -> Select[*_Ts]:
    if since is not None:
        q = q.where(col >= since)
    if until is not None:
        q = q.where(col <= until)
    return q


# ---- SQL ------------------------------------------------------------------------------------

class SqlMarketStore:
    """The embedded market store: tables in the SQL database."""

    name = "sql"

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._ticks = insert_ignore(engine, s.market_ticks)
        self._bars = upsert_if(engine, s.market_candles,
                               ["market", "timeframe", "open_time"], "revision")
        self._history_bars = insert_ignore(engine, s.market_candles)
        self._features = insert_ignore(engine, s.market_features)
        self._books = {v: insert_ignore(engine, t) for v, t in s.BOOK_TABLES.items()}

    async def _write(self, stmt: Executable, rows: list[Doc]) -> None:
        if rows:
            async with self.engine.begin() as conn:
                await conn.execute(stmt, rows)

    async def write_ticks(self, ticks: list[Tick]) -> None:
        await self._write(self._ticks, [tick_row(t) for t in ticks])

    async def write_bars(self, bars: list[Bar], keep_existing: bool = False) -> None:
        """``keep_existing``: bars from a venue's history never replace recorded ones."""
        stmt = self._history_bars if keep_existing else self._bars
        await self._write(stmt, [bar_row(b) for b in bars])

    async def write_features(self, rows: list[Features]) -> None:
        await self._write(self._features, [feature_row(f) for f in rows])

    async def write_books(self, venue: str, books: list[BookSnapshot]) -> None:
        await self._write(self._books[_venue(venue)], [book_row(b) for b in books])

    async def _rows(self, q: Executable) -> list[RowMapping]:
        async with self.engine.connect() as conn:
            return [r._mapping for r in await conn.execute(q)]

    async def ticks(self, market: str, limit: int, since: int | None = None,
                    until: int | None = None) -> list[Tick]:
        t = s.market_ticks
        q = _window(select(t).where(t.c.market == market), t.c.ts, since, until)
        rows = await self._rows(q.order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit))
        return [_tick(r) for r in rows]

    async def bars(self, market: str, timeframe: str, limit: int, since: int | None = None,
                   until: int | None = None) -> list[Bar]:
        t = s.market_candles
        q = select(t).where(t.c.market == market, t.c.timeframe == timeframe)
        q = _window(q, t.c.open_time, since, until).order_by(t.c.open_time.desc()).limit(limit)
        return [_bar(r) for r in await self._rows(q)]

    async def features(self, market: str, timeframe: str, limit: int,
                       since: int | None = None, until: int | None = None) -> list[Features]:
        t = s.market_features
        q = select(t).where(t.c.market == market, t.c.timeframe == timeframe)
        q = _window(q, t.c.open_time, since, until).order_by(t.c.open_time.desc()).limit(limit)
        return [_features(r) for r in await self._rows(q)]

    async def latest_book(self, venue: str, market: str) -> BookSnapshot | None:
        t: Table = s.BOOK_TABLES[_venue(venue)]
        q = select(t).where(t.c.market == market).order_by(t.c.ts.desc(), t.c.id.desc())
        rows = await self._rows(q.limit(1))
        return _book(rows[0]) if rows else None

    async def purge(self, cutoffs: Plan) -> dict[str, int]:
        return await purge_sql(self.engine, cutoffs)

    async def ping(self) -> None:
        await self._rows(select(1))

    async def close(self) -> None:
        """The engine belongs to the state store, which disposes of it."""


# ---- MongoDB --------------------------------------------------------------------------------

_INDEXES: dict[str, list[IndexModel]] = {
    "market_ticks": [
        IndexModel([("market", ASCENDING), ("trade_id", ASCENDING)], unique=True),
        IndexModel([("market", ASCENDING), ("ts", DESCENDING)]),
    ],
    "market_candles": [IndexModel(
        [("market", ASCENDING), ("timeframe", ASCENDING), ("open_time", DESCENDING)],
        unique=True)],
    "market_features": [IndexModel(
        [("market", ASCENDING), ("timeframe", ASCENDING), ("open_time", DESCENDING)],
        unique=True)],
    **{f"{v}_orderbook": [
        IndexModel([("market", ASCENDING), ("ts", DESCENDING), ("sequence", DESCENDING)],
                   unique=True)] for v in s.BOOK_TABLES},
}


def _only_duplicates(e: BulkWriteError) -> bool:
    errors = e.details.get("writeErrors", [])
    return all(err.get("code") == DUPLICATE_KEY for err in errors) and not e.details.get(
        "writeConcernErrors")


class MongoMarketStore:
    """The market store in MongoDB, on PyMongo's async client."""

    name = "mongo"

    def __init__(self, url: str, db: str, timeout_ms: int = 5000) -> None:
        """``timeout_ms``: how long an operation waits for an unreachable server."""
        self.client: AsyncMongoClient[Doc] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms)
        self.db = self.client[db]

    @classmethod
    async def open(cls, url: str, db: str, timeout_ms: int = 5000) -> MongoMarketStore:
        store = cls(url, db, timeout_ms)
        for name, indexes in _INDEXES.items():
            await store.db[name].create_indexes(indexes)
        return store

    async def _insert_all(self, coll: str, docs: list[Doc]) -> None:
        if docs:
            await self.db[coll].insert_many(docs, ordered=False)

    async def _insert(self, coll: str, docs: list[Doc]) -> None:
        """Insert; a document whose unique key is stored already is left as it is."""
        try:
            await self._insert_all(coll, docs)
        except BulkWriteError as e:
            if not _only_duplicates(e):
                raise

    async def write_ticks(self, ticks: list[Tick]) -> None:
        await self._insert("market_ticks", [tick_row(t) for t in ticks])

    async def write_bars(self, bars: list[Bar], keep_existing: bool = False) -> None:
        """New keys in one insert; a key already stored is replaced through the revision guard
        (``UpdateOne`` filtered on ``revision <= new``: when a newer revision is stored, the
        upsert's insert hits the unique key, which means "keep it", not an error)."""
        rows = [bar_row(b) for b in bars]
        try:
            await self._insert_all("market_candles", rows)
            return
        except BulkWriteError as e:
            if not _only_duplicates(e):
                raise
            stored = [rows[err["index"]] for err in e.details["writeErrors"]]
        if keep_existing:
            return
        ops = []
        for row in stored:
            row.pop("_id", None)  # insert_many gave it one; an update must not change _id
            key = {k: row[k] for k in ("market", "timeframe", "open_time")}
            ops.append(UpdateOne({**key, "revision": {"$lte": row["revision"]}},
                                 {"$set": row}, upsert=True))
        try:
            await self.db["market_candles"].bulk_write(ops, ordered=False)
        except BulkWriteError as e:
            if not _only_duplicates(e):
                raise

    async def write_features(self, rows: list[Features]) -> None:
        await self._insert("market_features", [feature_row(f) for f in rows])

    async def write_books(self, venue: str, books: list[BookSnapshot]) -> None:
        await self._insert(f"{_venue(venue)}_orderbook", [book_row(b) for b in books])

    async def _find(self, coll: str, flt: Doc, field: str, limit: int,
                    since: int | None, until: int | None) -> list[Doc]:
        rng = {k: v for k, v in (("$gte", since), ("$lte", until)) if v is not None}
        if rng:
            flt = {**flt, field: rng}
        order = [(field, DESCENDING), ("_id", DESCENDING)]  # ties: the last written first
        cur = self.db[coll].find(flt, {"_id": 0}).sort(order).limit(limit)
        return await cur.to_list(length=limit)

    async def ticks(self, market: str, limit: int, since: int | None = None,
                    until: int | None = None) -> list[Tick]:
        rows = await self._find("market_ticks", {"market": market}, "ts", limit, since, until)
        return [_tick(r) for r in rows]

    async def bars(self, market: str, timeframe: str, limit: int, since: int | None = None,
                   until: int | None = None) -> list[Bar]:
        rows = await self._find("market_candles", {"market": market, "timeframe": timeframe},
                                "open_time", limit, since, until)
        return [_bar(r) for r in rows]

    async def features(self, market: str, timeframe: str, limit: int,
                       since: int | None = None, until: int | None = None) -> list[Features]:
        rows = await self._find("market_features", {"market": market, "timeframe": timeframe},
                                "open_time", limit, since, until)
        return [_features(r) for r in rows]

    async def latest_book(self, venue: str, market: str) -> BookSnapshot | None:
        rows = await self._find(f"{_venue(venue)}_orderbook", {"market": market}, "ts", 1,
                                None, None)
        return _book(rows[0]) if rows else None

    async def purge(self, cutoffs: Plan) -> dict[str, int]:
        out = {}
        for coll, (field, before) in cutoffs.items():
            r = await self.db[coll].delete_many({field: {"$lt": before}})
            out[coll] = r.deleted_count
        return out

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def close(self) -> None:
        await self.client.close()


async def open_market_store(settings: Settings, engine: AsyncEngine) -> MarketStore:
    """MongoDB when ``AETHERION_MONGO_URL`` is set, else tables in the SQL database."""
    if settings.mongo_url:
        return await MongoMarketStore.open(settings.mongo_url, settings.mongo_db)
    return SqlMarketStore(engine)
