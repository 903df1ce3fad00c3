"""Raw telemetry partitioned by day on PostgreSQL (issue 19): migration 0005 converts a table
that already holds windows, housekeeping creates partitions ahead (moving stray rows out of the
default partition), retention drops whole partitions and keeps the aggregates. SQLite keeps the
plain table. Windows come from fleet.devsim (the agent's sketches and signing)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session, select

from fleet.catalogue import housekeeping
from fleet.devsim import SimDevice
from fleet.ingest import partitions, retention
from fleet.ingest.store import Processor
from fleet.migrate import upgrade
from fleet.models import Aggregate, TelemetryWindow
from fleet.registry.enrolment import create_enrolment_token, enrol

DAY = 86400.0


def _store(fleet, baseline, starts: list[float]) -> SimDevice:  # type: ignore[no-untyped-def]
    dev = SimDevice("p1", fleet=fleet.settings.fleet_id)
    with fleet.ctx.session() as db:
        tok, _ = create_enrolment_token(db, "test")
    with fleet.ctx.session() as db:
        enrol(db, fleet.settings, tok, dev.public_key_b64, device_id=dev.device_id, device_class=dev.device_class)
    rng = np.random.default_rng(5)
    msgs = [(dev.topic("telemetry"), dev.sign(dev.telemetry(rng, baseline, window_start=t))) for t in starts]
    proc = Processor(fleet.settings, fleet.ctx.engine)
    proc.process(msgs)
    proc.process(msgs)  # redelivered: still refused by the (device, seq, window_start) key
    assert proc.stats.snapshot()["stored"]["telemetry"] == len(starts)
    return dev


def _where(fleet) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with fleet.ctx.engine.connect() as conn:
        return dict(conn.execute(text("SELECT tableoid::regclass::text, count(*) FROM telemetrywindow GROUP BY 1")).all())


def test_partitions_ahead_and_retention_drops_days(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    old = now - 20 * DAY
    _store(fleet, baseline, [now, now + 60, old])
    with fleet.ctx.engine.connect() as conn:
        if fleet.ctx.engine.dialect.name == "sqlite":
            assert not partitions.is_partitioned(conn)  # SQLite keeps the plain table
            return
        assert partitions.is_partitioned(conn)
        names = {p.name for p in partitions.existing(conn)}
    assert {partitions.day_partition(now + d * DAY).name for d in range(-1, 4)} <= names
    where = _where(fleet)
    today, old_day = partitions.day_partition(now).name, partitions.day_partition(old).name
    assert where == {today: 2, partitions.DEFAULT: 1}
    # housekeeping run "as of" the old day: its partition is created and the stray row moves in
    out = housekeeping.run_once(fleet.ctx, old)
    assert old_day in out["partitions_created"]
    assert _where(fleet) == {today: 2, old_day: 1}
    # retention (14 days): the old day's partition is dropped, today's rows and aggregates stay
    with fleet.ctx.session() as db:
        deleted = retention.apply(db, fleet.settings, now)
    assert deleted["raw telemetry windows"] == 1
    with fleet.ctx.engine.connect() as conn:
        assert old_day not in {p.name for p in partitions.existing(conn)}
        assert partitions.table_bytes(conn) > 0
    assert _where(fleet) == {today: 2}
    with Session(fleet.ctx.engine) as db:
        # aggregates stay (per 60 s wall-clock slot: fleet.ingest.store.aggregate_bucket)
        assert {a.window_start for a in db.exec(select(Aggregate))} == {t // 60 * 60 for t in (now, now + 60, old)}


@pytest.mark.postgres
def test_migration_converts_a_table_with_rows(pg_database) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    with psycopg.connect(pg_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "mig0005"')
    engine = create_engine(f"{pg_database}?options=-csearch_path%3Dmig0005")
    try:
        upgrade(engine, "0004")
        with Session(engine) as db:
            db.execute(text("INSERT INTO telemetrywindow (device_id, seq, window_start, window_end, model_name, "
                            "model_version, role, device_class, cohort, requests, errors, payload, received_at) "
                            "VALUES ('d', 1, 1000, 1060, 'm', 1, 'active', '', '', 5, 0, '{}', 1000)"))
            db.commit()
        upgrade(engine)
        with Session(engine) as db:
            assert partitions.is_partitioned(db.connection())
            db.add(TelemetryWindow(device_id="d", seq=2, window_start=time.time(), window_end=time.time() + 60,
                                   model_name="m", model_version=1))
            db.commit()
            rows = db.exec(select(TelemetryWindow).order_by(TelemetryWindow.id)).all()
            assert [(r.seq, r.requests) for r in rows] == [(1, 5), (2, 0)] and rows[1].id > rows[0].id
    finally:
        engine.dispose()
