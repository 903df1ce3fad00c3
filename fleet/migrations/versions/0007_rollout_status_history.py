"""rollout and wave status history (issue 17: the rollout state machine writes every move)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 04:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table('rollout_status_history'):  # create_all made it before this revision
        return
    op.create_table('rollout_status_history',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('rollout_id', sa.Integer(), nullable=False),
                    sa.Column('wave_index', sa.Integer(), nullable=True),
                    sa.Column('at', sa.Float(), nullable=False),
                    sa.Column('event', _S(), nullable=False),
                    sa.Column('from_status', _S(), nullable=False),
                    sa.Column('to_status', _S(), nullable=False),
                    sa.Column('reason', _S(), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_rollout_status_history_rollout_id', 'rollout_status_history', ['rollout_id'])


def downgrade() -> None:
    op.drop_index('ix_rollout_status_history_rollout_id', 'rollout_status_history')
    op.drop_table('rollout_status_history')
