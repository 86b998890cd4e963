"""regime_state.confidence_raw and decisions.exposure

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000

Both nullable: rows written before this revision have no value (a decision's exposure is then
its position's level, -1/0/1, when it is read back).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('regime_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('confidence_raw', sa.Double(), nullable=True))

    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('exposure', sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_column('exposure')

    with op.batch_alter_table('regime_state', schema=None) as batch_op:
        batch_op.drop_column('confidence_raw')
