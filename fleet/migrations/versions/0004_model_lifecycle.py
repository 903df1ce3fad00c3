"""model lifecycle: owners, version status, reviews (issue 16)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 01:20:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    have = sa.inspect(op.get_bind()).has_table  # tables create_all made before this revision stay
    if not have('model_owner'):
        op.create_table('model_owner',
                        sa.Column('name', _S(length=128), nullable=False),
                        sa.Column('team', _S(), nullable=False),
                        sa.Column('contact', _S(), nullable=False),
                        sa.Column('oncall', _S(), nullable=False),
                        sa.Column('review_interval_days', sa.Integer(), nullable=False),
                        sa.Column('created_at', sa.Float(), nullable=False),
                        sa.Column('updated_at', sa.Float(), nullable=False),
                        sa.Column('updated_by', _S(), nullable=False),
                        sa.PrimaryKeyConstraint('name'))
    if not have('model_version_status'):
        op.create_table('model_version_status',
                        sa.Column('id', sa.Integer(), nullable=False),
                        sa.Column('name', _S(), nullable=False),
                        sa.Column('version', sa.Integer(), nullable=False),
                        sa.Column('status', _S(), nullable=False),
                        sa.Column('reason', _S(), nullable=False),
                        sa.Column('changed_by', _S(), nullable=False),
                        sa.Column('changed_at', sa.Float(), nullable=False),
                        sa.PrimaryKeyConstraint('id'),
                        sa.UniqueConstraint('name', 'version', name='uq_model_version_status_nv'))
        with op.batch_alter_table('model_version_status', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_model_version_status_name'), ['name'], unique=False)
    if not have('model_review'):
        op.create_table('model_review',
                        sa.Column('id', sa.Integer(), nullable=False),
                        sa.Column('name', _S(), nullable=False),
                        sa.Column('version', sa.Integer(), nullable=True),
                        sa.Column('reviewer', _S(), nullable=False),
                        sa.Column('at', sa.Float(), nullable=False),
                        sa.Column('decision', _S(), nullable=False),
                        sa.Column('notes', _S(), nullable=False),
                        sa.PrimaryKeyConstraint('id'))
        with op.batch_alter_table('model_review', schema=None) as batch_op:
            batch_op.create_index(batch_op.f('ix_model_review_name'), ['name'], unique=False)
            batch_op.create_index(batch_op.f('ix_model_review_at'), ['at'], unique=False)


def downgrade() -> None:
    op.drop_table('model_review')
    op.drop_table('model_version_status')
    op.drop_table('model_owner')
