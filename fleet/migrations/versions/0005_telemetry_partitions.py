"""telemetry partitioned by day on PostgreSQL; device quarantine (issue 19)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 01:45:00

PostgreSQL: `telemetrywindow` becomes PARTITION BY RANGE (window_start) (fleet.ingest.partitions); the
rows it had are copied in (older days land in the default partition and age out with retention).
The unique key becomes (device_id, seq, window_start): a partitioned table's unique keys must hold
the partition column. SQLite keeps the plain table.
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_COLUMNS = """
    id bigserial NOT NULL,
    device_id varchar NOT NULL,
    seq bigint NOT NULL,
    window_start float8 NOT NULL,
    window_end float8 NOT NULL,
    model_name varchar NOT NULL,
    model_version integer NOT NULL,
    role varchar NOT NULL,
    device_class varchar NOT NULL,
    cohort varchar NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    payload json,
    received_at float8 NOT NULL,
    PRIMARY KEY (id, window_start),
    CONSTRAINT uq_telemetry_device_seq UNIQUE (device_id, seq, window_start)
"""
_NAMES = ("id, device_id, seq, window_start, window_end, model_name, model_version, role, device_class, cohort, "
          "requests, errors, payload, received_at")


def upgrade() -> None:
    bind = op.get_bind()
    have = {c["name"] for c in sa.inspect(bind).get_columns("device")}
    with op.batch_alter_table("device") as batch:
        if "quarantined_at" not in have:
            batch.add_column(sa.Column("quarantined_at", sa.Float(), nullable=True))
        if "quarantine_reason" not in have:
            batch.add_column(sa.Column("quarantine_reason", sa.String(), nullable=True))
    if bind.dialect.name != "postgresql":
        return
    from fleet.ingest import partitions

    if partitions.is_partitioned(bind):
        return
    op.execute("ALTER TABLE telemetrywindow RENAME TO telemetrywindow_unpartitioned")
    op.execute("ALTER SEQUENCE IF EXISTS telemetrywindow_id_seq RENAME TO telemetrywindow_unpartitioned_id_seq")
    for ix in ("ix_telemetry_model_window", "ix_telemetrywindow_device_id", "ix_telemetrywindow_received_at"):
        op.execute(f"DROP INDEX IF EXISTS {ix}")
    op.execute("ALTER TABLE telemetrywindow_unpartitioned DROP CONSTRAINT IF EXISTS uq_telemetry_device_seq")
    op.execute(f"CREATE TABLE telemetrywindow ({_COLUMNS}) PARTITION BY RANGE (window_start)")
    partitions.ensure(bind)
    op.execute(f"INSERT INTO telemetrywindow ({_NAMES}) SELECT {_NAMES} FROM telemetrywindow_unpartitioned")
    op.execute("SELECT setval('telemetrywindow_id_seq', coalesce((SELECT max(id) FROM telemetrywindow), 0) + 1, false)")
    op.execute("DROP TABLE telemetrywindow_unpartitioned")
    op.execute("CREATE INDEX ix_telemetry_model_window ON telemetrywindow (model_name, model_version, window_start)")
    op.execute("CREATE INDEX ix_telemetrywindow_device_id ON telemetrywindow (device_id)")
    op.execute("CREATE INDEX ix_telemetrywindow_received_at ON telemetrywindow (received_at)")


def downgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.drop_column("quarantine_reason")
        batch.drop_column("quarantined_at")
    # the partitioned table stays: it serves every query the plain one did
