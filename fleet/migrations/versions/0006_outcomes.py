"""prediction records and outcome labels for the backend outcome join (issue 14)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 02:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    have = sa.inspect(op.get_bind()).has_table  # tables create_all made before this revision stay
    if not have('predictionrecord'):
        op.create_table('predictionrecord',
                        sa.Column('request_id', _S(length=80), nullable=False),
                        sa.Column('window_id', sa.BigInteger(), nullable=False),
                        sa.Column('device_id', _S(), nullable=False),
                        sa.Column('model_name', _S(), nullable=False),
                        sa.Column('model_version', sa.Integer(), nullable=False),
                        sa.Column('device_class', _S(), nullable=False),
                        sa.Column('cohort', _S(), nullable=False),
                        sa.Column('predicted', sa.Float(), nullable=False),
                        sa.Column('confidence', sa.Float(), nullable=True),
                        sa.Column('slice', _S(), nullable=False),
                        sa.Column('at', sa.Float(), nullable=False),
                        sa.PrimaryKeyConstraint('request_id'))
        op.create_index('ix_predictionrecord_window_id', 'predictionrecord', ['window_id'])
        op.create_index('ix_predictionrecord_model', 'predictionrecord', ['model_name', 'model_version'])
    if not have('outcomelabel'):
        op.create_table('outcomelabel',
                        sa.Column('request_id', _S(length=80), nullable=False),
                        sa.Column('label', sa.Float(), nullable=False),
                        sa.Column('received_at', sa.Float(), nullable=False),
                        sa.PrimaryKeyConstraint('request_id'))
        op.create_index('ix_outcomelabel_received_at', 'outcomelabel', ['received_at'])


def downgrade() -> None:
    op.drop_table('outcomelabel')
    op.drop_table('predictionrecord')
