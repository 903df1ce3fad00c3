"""aggregates by rollout wave; windows per device and version (issue 19: rollouts and drift read aggregates)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 07:00:00

`aggregate.wave` ("<rollout id>:<wave index>" while the device is a target of an open rollout of
the model, "" otherwise) joins the aggregate key, so a rollout wave's evidence is a sum of merged
rows. `device_version_windows` counts each device's windows per model, role and version (first
start, last end): the rollout reporting gate and model-health device counts read it.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString
_OLD_KEY = ['model_name', 'model_version', 'role', 'device_class', 'cohort', 'window_start']


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    if 'wave' not in {c['name'] for c in insp.get_columns('aggregate')}:
        with op.batch_alter_table('aggregate') as batch:
            batch.add_column(sa.Column('wave', _S(length=64), nullable=False, server_default=''))
            batch.drop_constraint('uq_aggregate_key', type_='unique')
            batch.create_unique_constraint('uq_aggregate_key', [*_OLD_KEY, 'wave'])
            batch.create_index('ix_aggregate_wave', ['model_name', 'wave', 'window_start'])
    if insp.has_table('device_version_windows'):  # create_all made it before this revision
        return
    op.create_table('device_version_windows',
                    sa.Column('device_id', _S(length=128), nullable=False),
                    sa.Column('model_name', _S(length=128), nullable=False),
                    sa.Column('role', _S(length=16), nullable=False),
                    sa.Column('model_version', sa.Integer(), nullable=False),
                    sa.Column('device_class', _S(), nullable=False),
                    sa.Column('first_start', sa.Float(), nullable=False),
                    sa.Column('last_end', sa.Float(), nullable=False),
                    sa.Column('windows', sa.BigInteger(), nullable=False),
                    sa.PrimaryKeyConstraint('device_id', 'model_name', 'role', 'model_version'))
    op.create_index('ix_device_version_windows_model', 'device_version_windows',
                    ['model_name', 'model_version', 'last_end'])


def downgrade() -> None:
    op.drop_index('ix_device_version_windows_model', 'device_version_windows')
    op.drop_table('device_version_windows')
    with op.batch_alter_table('aggregate') as batch:
        batch.drop_index('ix_aggregate_wave')
        batch.drop_constraint('uq_aggregate_key', type_='unique')
        batch.create_unique_constraint('uq_aggregate_key', _OLD_KEY)
        batch.drop_column('wave')
