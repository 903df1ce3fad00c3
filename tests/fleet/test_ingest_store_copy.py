"""Ingest's storing stage end to end on both databases: every window column as the device sent
it (on PostgreSQL the exact signed text, through COPY and a staging table), duplicates skipped
within and across batches, aggregates equal to merging the stored windows (key order included),
device runs and last_seen written; and the COPY insert on a table that is not partitioned."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session, select

from agent.canonical import canonical_json
from fleet.devsim import SimDevice
from fleet.ingest import aggregate
from fleet.ingest.store import Processor, aggregate_bucket
from fleet.ingest.window_insert import COLUMNS, WindowInserter
from fleet.migrate import upgrade
from fleet.models import Aggregate, Device, TelemetryWindow
from fleet.registry.enrolment import create_enrolment_token, enrol


def _enrol(fleet, dev: SimDevice, region: str) -> None:  # type: ignore[no-untyped-def]
    dev.fleet = fleet.settings.fleet_id
    with fleet.ctx.session() as db:
        tok, _ = create_enrolment_token(db, "test")
    with fleet.ctx.session() as db:
        enrol(db, fleet.settings, tok, dev.public_key_b64, device_id=dev.device_id, device_class=dev.device_class,
              attributes={"region": region})


def test_windows_are_stored_as_sent_once_and_aggregated_exactly(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(11)
    devs = [SimDevice(f"c{i}") for i in range(4)]
    for i, d in enumerate(devs):
        _enrol(fleet, d, "eu" if i % 2 else "us")
    sent = {}
    for i, d in enumerate(devs):
        for k in range(2):
            p = d.telemetry(rng, baseline, window_start=1764100000.0 + 60 * k, errors=i + k)
            p["latency_us"]["buckets"][str(150 + i)] = 1  # a bucket key only this device has
            if i == 3:
                p["resources"] = {"temp_c": None, "gpu": 2}  # a key first seen without a number
            sent[(d.device_id, p["seq"])] = (d, p)
    msgs = {key: (d.topic("telemetry"), d.sign(p)) for key, (d, p) in sent.items()}
    keys = sorted(sent)
    proc = Processor(fleet.settings, fleet.ctx.engine)
    t0 = time.time()
    proc.process([msgs[k] for k in keys[:5]] + [msgs[keys[0]]])  # a duplicate within the batch
    proc.process([msgs[k] for k in reversed(keys)])             # five redelivered, three new
    snap = proc.stats.snapshot()
    assert snap["stored"]["telemetry"] == 8 and snap["duplicates"]["telemetry"] == 6
    with Session(fleet.ctx.engine) as db:
        rows = db.exec(select(TelemetryWindow)).all()
        aggs = db.exec(select(Aggregate)).all()
        devices = {d.id: d for d in db.exec(select(Device))}
        runs = db.execute(text("SELECT device_id, windows, first_start, last_end FROM device_version_windows")).all()
        pg = fleet.ctx.engine.dialect.name == "postgresql"
        texts = dict(db.execute(text("SELECT device_id || ':' || seq, payload::text FROM telemetrywindow")).all()
                     ) if pg else {}
    assert sorted((r.device_id, r.seq) for r in rows) == keys
    for r in rows:
        d, p = sent[(r.device_id, r.seq)]
        region = "eu" if devs.index(d) % 2 else "us"
        assert (r.window_start, r.window_end, r.model_name, r.model_version, r.role, r.device_class, r.cohort,
                r.requests, r.errors) == (p["window"]["start"], p["window"]["end"], "digits", 1, "active",
                                          d.device_class, f"region={region}", p["requests"], sum(p["errors"].values()))
        assert r.payload == p and t0 <= r.received_at <= time.time()
        if pg:  # the bytes the device signed, not a re-encoding
            assert texts[f"{r.device_id}:{r.seq}"] == canonical_json(p).decode()
    assert len(aggs) == 4  # two cohorts x two minute slots
    for a in aggs:
        members = [json.loads(canonical_json(p)) for (d, p) in (sent[k] for k in keys) if f"region={'eu' if devs.index(d) % 2 else 'us'}"
                   == a.cohort and aggregate_bucket(p["window"]["start"], p["window"]["end"])[1] == a.window_start]
        want = aggregate.merge_all(members)  # as ingest reads them: from the signed (sorted-key) text
        assert json.dumps(a.payload) == json.dumps(want)  # exact sums and key order
        assert (a.n_windows, a.requests, a.errors) == (2, want["requests"], sum(want["errors"].values()))
    assert sorted((d, n) for d, n, _, _ in runs) == [(d.device_id, 2) for d in devs]
    assert {(s, e) for _, _, s, e in runs} == {(1764100000.0, 1764100120.0)}
    assert all(devices[d.device_id].online and devices[d.device_id].last_seen >= t0 for d in devs)


def _rows(seqs: list[int], ts: float) -> list[tuple]:  # type: ignore[type-arg]
    return [(f"dev{s % 3}", s, 1000.0 + s, 1060.0 + s, "m", 1, "active", "cls", "all", 5 * s, s % 2,
             {"seq": s, "note": "tab\there, quote \" and é"}, ts) for s in seqs]


@pytest.mark.postgres
def test_copy_insert_on_a_plain_table_skips_stored_keys_and_leaves_no_staged_rows(pg_database) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    with psycopg.connect(pg_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute('CREATE SCHEMA IF NOT EXISTS "plaincopy"')
    engine = create_engine(f"{pg_database}?options=-csearch_path%3Dplaincopy", pool_size=1, max_overflow=0)
    try:
        upgrade(engine, "0004")  # before day partitions: the unique key is (device_id, seq)
        ins = WindowInserter(engine)
        with Session(engine) as db:
            assert ins.insert(db, _rows([1, 2, 3], 7.0)) == {("dev1", 1), ("dev2", 2), ("dev0", 3)}
            db.commit()
        with Session(engine) as db:  # the same connection (pool of one): its staging table was emptied
            assert db.execute(text("SELECT count(*) FROM pg_temp.telemetrywindow_stage")).scalar() == 0
            assert ins.insert(db, _rows([2, 3, 4], 8.0)) == {("dev1", 4)}
            db.rollback()
        with Session(engine) as db:
            assert ins.insert(db, _rows([4, 5], 9.0)) == {("dev1", 4), ("dev2", 5)}  # 4 was rolled back
            db.commit()
            got = db.execute(text(f"SELECT {', '.join(COLUMNS[:-2])}, payload::text, received_at FROM telemetrywindow "
                                  "ORDER BY seq")).all()
        want = _rows([1, 2, 3], 7.0) + _rows([4, 5], 9.0)
        assert [tuple(g) for g in got] == [(*w[:-2], json.dumps(w[-2], separators=(",", ":")), w[-1]) for w in want]
    finally:
        engine.dispose()


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_storing_resumes_on_a_new_connection_after_the_server_dropped_the_old_one(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    """The staging table belongs to a connection: a database restart (here: the server ends the
    pooled connection) leaves the next batch a new connection, which makes its own (PostgreSQL
    only: SQLite has no server and no staging table)."""
    assert fleet.ctx.engine.dialect.name == "postgresql"
    import psycopg

    dev = SimDevice("r1")
    _enrol(fleet, dev, "eu")
    rng = np.random.default_rng(12)
    msgs = [(dev.topic("telemetry"), dev.sign(dev.telemetry(rng, baseline, window_start=1764100000.0 + 60 * k)))
            for k in range(3)]
    proc = Processor(fleet.settings, fleet.ctx.engine)
    proc.process(msgs[:1])
    url = fleet.ctx.engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
    with psycopg.connect(url, autocommit=True) as conn:
        ended = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert ended and ended[0] >= 1
    proc.process(msgs)  # one redelivered, two new
    snap = proc.stats.snapshot()
    assert snap["stored"]["telemetry"] == 3 and snap["duplicates"]["telemetry"] == 1 and not snap["dropped"]
    with Session(fleet.ctx.engine) as db:
        assert [a.n_windows for a in db.exec(select(Aggregate))] == [1, 1, 1]  # one per minute slot
