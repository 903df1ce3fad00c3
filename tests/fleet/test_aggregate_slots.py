"""Agents start their telemetry windows when they start (agent.telemetry: window_start =
time.time()), not on the clock. Ingest merges them per wall-clock slot of the window's length, so
drift sees every device of a cohort in one aggregate (issue 19: before, each device's window was
an aggregate row of its own and drift never had enough samples)."""

from __future__ import annotations

import numpy as np
from sqlmodel import Session, select

from fleet.devsim import SimDevice
from fleet.ingest.store import Processor, aggregate_bucket
from fleet.models import Aggregate
from fleet.registry.enrolment import create_enrolment_token, enrol


def test_unaligned_windows_merge_into_one_aggregate_per_slot(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(12)
    devs = [SimDevice(f"slot{i}", fleet=fleet.settings.fleet_id) for i in range(6)]
    for d in devs:
        with fleet.ctx.session() as db:
            tok, _ = create_enrolment_token(db, "test")
        with fleet.ctx.session() as db:
            enrol(db, fleet.settings, tok, d.public_key_b64, device_id=d.device_id, attributes={"region": "eu"})
    t0 = 1_764_000_000.0  # a multiple of 60
    msgs = [(d.topic("telemetry"), d.sign(d.telemetry(rng, baseline, window_start=t0 + 7.3 * i + 60 * w, n=100)))
            for w in range(2) for i, d in enumerate(devs)]
    Processor(fleet.settings, fleet.ctx.engine).process(msgs)
    with Session(fleet.ctx.engine) as db:
        aggs = sorted(db.exec(select(Aggregate)).all(), key=lambda a: a.window_start)
    assert [(a.window_start, a.n_windows, a.requests, a.window_seconds) for a in aggs] == \
        [(t0, 6, 600, 60.0), (t0 + 60, 6, 600, 60.0)]
    assert aggregate_bucket(t0 + 59.9, t0 + 119.9) == (60.0, t0)
    assert aggregate_bucket(5.0, 5.5) == (0.5, 5.0)  # sub-second windows keep their own start
