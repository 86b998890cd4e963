"""The SQL schema, one place: the state store's tables and the embedded market store's.

Alembic migrations in ``migrations/`` create exactly these tables; this module is what the code
queries. Times are epoch milliseconds (BIGINT), UTC. String keys stay within MySQL's index limits
under utf8mb4.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

__all__ = [
    "BOOK_TABLES", "decisions", "market_candles", "market_features", "market_fences",
    "market_ticks", "metadata",
    "model_versions", "regime_state", "regime_transitions", "system_state",
]

metadata = MetaData()

MARKET = 64  # market ids
SHORT = 32  # timeframes, regimes, actions, strategies, states


def _market(primary_key: bool = False) -> Column[str]:
    return Column("market", String(MARKET), nullable=False, primary_key=primary_key)


system_state = Table(
    "system_state", metadata,
    Column("key", String(191), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# 0003: the instance that may write a market's state (cluster mode; docs/scale-out.md)
market_fences = Table(
    "market_fences", metadata,
    _market(primary_key=True),
    Column("owner", String(191), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

regime_state = Table(
    "regime_state", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    _market(),
    Column("timeframe", String(SHORT), nullable=False),
    Column("open_time", BigInteger, nullable=False),
    Column("regime_raw", String(SHORT), nullable=False),
    Column("regime", String(SHORT), nullable=False),
    Column("confidence", Double, nullable=True),
    Column("probs", JSON, nullable=False),
    Column("model_version", Integer, nullable=True),
    Column("strategy", String(SHORT), nullable=True),
    Column("contributions", JSON, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("confidence_raw", Double, nullable=True),  # 0002; NULL in older rows
    UniqueConstraint("market", "timeframe", "open_time", name="uq_regime_state_key"),
)

regime_transitions = Table(
    "regime_transitions", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    _market(),
    Column("timeframe", String(SHORT), nullable=False),
    Column("open_time", BigInteger, nullable=False),
    Column("from_regime", String(SHORT), nullable=False),
    Column("to_regime", String(SHORT), nullable=False),
    Column("confidence", Double, nullable=True),
    Column("from_strategy", String(SHORT), nullable=True),
    Column("to_strategy", String(SHORT), nullable=True),
    Column("cause", String(255), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("market", "timeframe", "open_time", name="uq_regime_transitions_key"),
)

model_versions = Table(
    "model_versions", metadata,
    _market(primary_key=True),
    Column("timeframe", String(SHORT), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("effective_from", BigInteger, nullable=False),
    Column("trained_at", BigInteger, nullable=False),
    Column("train_start", BigInteger, nullable=True),
    Column("train_end", BigInteger, nullable=True),
    Column("n_obs", Integer, nullable=False),
    Column("loglik", Double, nullable=True),
    Column("params", JSON, nullable=False),
    Column("status", String(SHORT), nullable=False),
    Column("reason", String(255), nullable=True),
)

decisions = Table(
    "decisions", metadata,
    Column("id", String(64), primary_key=True),
    _market(),
    Column("timeframe", String(SHORT), nullable=False),
    Column("bar_time", BigInteger, nullable=False),
    Column("action", String(8), nullable=False),
    Column("strategy", String(SHORT), nullable=True),
    Column("regime", String(SHORT), nullable=False),
    Column("confidence", Double, nullable=True),
    Column("price", Double, nullable=False),
    Column("rule", String(255), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("position_before", String(8), nullable=False),
    Column("position_after", String(8), nullable=False),
    Column("suppressed", Boolean, nullable=False),
    Column("reason", String(255), nullable=True),
    Column("model_version", Integer, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("exposure", Double, nullable=True),  # 0002; NULL in older rows
    UniqueConstraint("market", "timeframe", "bar_time", name="uq_decisions_bar"),
    Index("ix_decisions_market_bar_time", "market", "bar_time"),
    Index("ix_decisions_created_at", "created_at"),
)

# ---- the embedded market store ------------------------------------------------------------

market_ticks = Table(
    "market_ticks", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    _market(),
    Column("trade_id", String(96), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("recv_ns", BigInteger, nullable=False),
    Column("price", Double, nullable=False),
    Column("size", Double, nullable=False),
    Column("side", Integer, nullable=False),
    Column("side_inferred", Boolean, nullable=False),
    UniqueConstraint("market", "trade_id", name="uq_market_ticks_trade"),
    Index("ix_market_ticks_market_ts", "market", "ts"),
)

_BAR_COLUMNS = ("open", "high", "low", "close", "volume", "buy_volume", "sell_volume")

market_candles = Table(
    "market_candles", metadata,
    _market(primary_key=True),
    Column("timeframe", String(SHORT), primary_key=True),
    Column("open_time", BigInteger, primary_key=True),
    *(Column(c, Double, nullable=False) for c in _BAR_COLUMNS),
    Column("trade_count", Integer, nullable=False),
    Column("closed", Boolean, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("sided", Boolean, nullable=False),
    Column("first_ts", BigInteger, nullable=False),
    Column("last_ts", BigInteger, nullable=False),
)

_FEATURE_COLUMNS = (
    "close", "log_return", "true_range", "atr", "volatility", "volatility_ann", "volume_delta",
    "cum_volume_delta", "norm_volume_delta",
)

market_features = Table(
    "market_features", metadata,
    _market(primary_key=True),
    Column("timeframe", String(SHORT), primary_key=True),
    Column("open_time", BigInteger, primary_key=True),
    *(Column(c, Double, nullable=c != "close") for c in _FEATURE_COLUMNS),
    Column("extra", JSON, nullable=False),
)


def _book_table(name: str) -> Table:
    return Table(
        name, metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
               autoincrement=True),
        _market(),
        Column("ts", BigInteger, nullable=False),
        Column("sequence", BigInteger, nullable=False),  # 0 when the venue gives none
        Column("state", String(SHORT), nullable=False),
        Column("bids", JSON, nullable=False),
        Column("asks", JSON, nullable=False),
        UniqueConstraint("market", "ts", "sequence", name=f"uq_{name}_key"),
        Index(f"ix_{name}_market_ts", "market", "ts"),
    )


BOOK_TABLES = {v: _book_table(f"{v}_orderbook") for v in ("crypto", "us", "nse")}
BAR_COLUMNS = _BAR_COLUMNS
FEATURE_COLUMNS = _FEATURE_COLUMNS
