"""market_fences: which instance may write a market's state (cluster mode)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 11:00:00.000000

One row per market: the owner and lease token of the instance that took the market last. An
instance writes a market's regimes, transitions, model versions and decisions only while the row
is its own (docs/scale-out.md, fencing).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'market_fences',
        sa.Column('market', sa.String(length=64), nullable=False),
        sa.Column('owner', sa.String(length=191), nullable=False),
        sa.Column('token', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('market'),
    )


def downgrade() -> None:
    op.drop_table('market_fences')
