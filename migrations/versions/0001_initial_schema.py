"""initial schema: state store tables and the embedded market store's tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 01:02:22.800668
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT row ids, INTEGER on SQLite (its only auto-increment type)
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table('crypto_orderbook',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('bids', sa.JSON(), nullable=False),
    sa.Column('asks', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'ts', 'sequence', name='uq_crypto_orderbook_key')
    )
    with op.batch_alter_table('crypto_orderbook', schema=None) as batch_op:
        batch_op.create_index('ix_crypto_orderbook_market_ts', ['market', 'ts'], unique=False)

    op.create_table('decisions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=32), nullable=False),
    sa.Column('bar_time', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('strategy', sa.String(length=32), nullable=True),
    sa.Column('regime', sa.String(length=32), nullable=False),
    sa.Column('confidence', sa.Double(), nullable=True),
    sa.Column('price', sa.Double(), nullable=False),
    sa.Column('rule', sa.String(length=255), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('position_before', sa.String(length=8), nullable=False),
    sa.Column('position_after', sa.String(length=8), nullable=False),
    sa.Column('suppressed', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.String(length=255), nullable=True),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'timeframe', 'bar_time', name='uq_decisions_bar')
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_decisions_market_bar_time', ['market', 'bar_time'], unique=False)

    op.create_table('market_candles',
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=32), nullable=False),
    sa.Column('open_time', sa.BigInteger(), nullable=False),
    sa.Column('open', sa.Double(), nullable=False),
    sa.Column('high', sa.Double(), nullable=False),
    sa.Column('low', sa.Double(), nullable=False),
    sa.Column('close', sa.Double(), nullable=False),
    sa.Column('volume', sa.Double(), nullable=False),
    sa.Column('buy_volume', sa.Double(), nullable=False),
    sa.Column('sell_volume', sa.Double(), nullable=False),
    sa.Column('trade_count', sa.Integer(), nullable=False),
    sa.Column('closed', sa.Boolean(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('sided', sa.Boolean(), nullable=False),
    sa.Column('first_ts', sa.BigInteger(), nullable=False),
    sa.Column('last_ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('market', 'timeframe', 'open_time')
    )
    op.create_table('market_features',
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=32), nullable=False),
    sa.Column('open_time', sa.BigInteger(), nullable=False),
    sa.Column('close', sa.Double(), nullable=False),
    sa.Column('log_return', sa.Double(), nullable=True),
    sa.Column('true_range', sa.Double(), nullable=True),
    sa.Column('atr', sa.Double(), nullable=True),
    sa.Column('volatility', sa.Double(), nullable=True),
    sa.Column('volatility_ann', sa.Double(), nullable=True),
    sa.Column('volume_delta', sa.Double(), nullable=True),
    sa.Column('cum_volume_delta', sa.Double(), nullable=True),
    sa.Column('norm_volume_delta', sa.Double(), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('market', 'timeframe', 'open_time')
    )
    op.create_table('market_ticks',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('trade_id', sa.String(length=96), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('recv_ns', sa.BigInteger(), nullable=False),
    sa.Column('price', sa.Double(), nullable=False),
    sa.Column('size', sa.Double(), nullable=False),
    sa.Column('side', sa.Integer(), nullable=False),
    sa.Column('side_inferred', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'trade_id', name='uq_market_ticks_trade')
    )
    with op.batch_alter_table('market_ticks', schema=None) as batch_op:
        batch_op.create_index('ix_market_ticks_market_ts', ['market', 'ts'], unique=False)

    op.create_table('model_versions',
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('effective_from', sa.BigInteger(), nullable=False),
    sa.Column('trained_at', sa.BigInteger(), nullable=False),
    sa.Column('train_start', sa.BigInteger(), nullable=True),
    sa.Column('train_end', sa.BigInteger(), nullable=True),
    sa.Column('n_obs', sa.Integer(), nullable=False),
    sa.Column('loglik', sa.Double(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('market', 'timeframe', 'version')
    )
    op.create_table('nse_orderbook',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('bids', sa.JSON(), nullable=False),
    sa.Column('asks', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'ts', 'sequence', name='uq_nse_orderbook_key')
    )
    with op.batch_alter_table('nse_orderbook', schema=None) as batch_op:
        batch_op.create_index('ix_nse_orderbook_market_ts', ['market', 'ts'], unique=False)

    op.create_table('regime_state',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=32), nullable=False),
    sa.Column('open_time', sa.BigInteger(), nullable=False),
    sa.Column('regime_raw', sa.String(length=32), nullable=False),
    sa.Column('regime', sa.String(length=32), nullable=False),
    sa.Column('confidence', sa.Double(), nullable=True),
    sa.Column('probs', sa.JSON(), nullable=False),
    sa.Column('model_version', sa.Integer(), nullable=True),
    sa.Column('strategy', sa.String(length=32), nullable=True),
    sa.Column('contributions', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'timeframe', 'open_time', name='uq_regime_state_key')
    )
    op.create_table('regime_transitions',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('timeframe', sa.String(length=32), nullable=False),
    sa.Column('open_time', sa.BigInteger(), nullable=False),
    sa.Column('from_regime', sa.String(length=32), nullable=False),
    sa.Column('to_regime', sa.String(length=32), nullable=False),
    sa.Column('confidence', sa.Double(), nullable=True),
    sa.Column('from_strategy', sa.String(length=32), nullable=True),
    sa.Column('to_strategy', sa.String(length=32), nullable=True),
    sa.Column('cause', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'timeframe', 'open_time', name='uq_regime_transitions_key')
    )
    op.create_table('system_state',
    sa.Column('key', sa.String(length=191), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('us_orderbook',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('market', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('bids', sa.JSON(), nullable=False),
    sa.Column('asks', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('market', 'ts', 'sequence', name='uq_us_orderbook_key')
    )
    with op.batch_alter_table('us_orderbook', schema=None) as batch_op:
        batch_op.create_index('ix_us_orderbook_market_ts', ['market', 'ts'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('us_orderbook', schema=None) as batch_op:
        batch_op.drop_index('ix_us_orderbook_market_ts')

    op.drop_table('us_orderbook')
    op.drop_table('system_state')
    op.drop_table('regime_transitions')
    op.drop_table('regime_state')
    with op.batch_alter_table('nse_orderbook', schema=None) as batch_op:
        batch_op.drop_index('ix_nse_orderbook_market_ts')

    op.drop_table('nse_orderbook')
    op.drop_table('model_versions')
    with op.batch_alter_table('market_ticks', schema=None) as batch_op:
        batch_op.drop_index('ix_market_ticks_market_ts')

    op.drop_table('market_ticks')
    op.drop_table('market_features')
    op.drop_table('market_candles')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_decisions_market_bar_time')
        batch_op.drop_index('ix_decisions_created_at')

    op.drop_table('decisions')
    with op.batch_alter_table('crypto_orderbook', schema=None) as batch_op:
        batch_op.drop_index('ix_crypto_orderbook_market_ts')

    op.drop_table('crypto_orderbook')
