"""Scale-out on one machine (issue 19 item 4): three ingest processes on one shared
subscription (the fleet server's own plus two `IngestService` processes) and two evaluator
processes on PostgreSQL and the real Mosquitto. A bad version stops at the canary, and every
target gets exactly one decision (one install, one rollback), whoever holds the lease."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from typing import Any

import pytest

from fleet.rollouts.assignment import assign_waves
from fleet.rollouts.spec import RolloutSpec
from tests.rollouts.harness import spec_dict
from tests.rollouts.mqtt_world import MqttWorld
from tests.rollouts.simdevice import Behaviour
from tests.rollouts.test_scaleout_processes import evaluator_process
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres, pytest.mark.slow]


def _ingest(settings: Any, client_id: str, ready: Any, stop: Any, out: Any) -> None:
    from fleet.db import make_engine
    from fleet.ingest.service import IngestService

    svc = IngestService(settings, make_engine(settings.database_url), client_id=client_id).start(timeout=30)
    ready.set()
    stop.wait()
    svc.drain(10)
    svc.stop()
    out.put(svc.stats.snapshot())


def test_three_ingest_and_two_evaluator_processes_decide_once(pg_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = MqttWorld(tmp_path / "w", n_devices=10, database_url=pg_url, evaluator=False,
                  behaviours={2: Behaviour(drift=True)})
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in range(2)]
    ingest = [ctx.Process(target=_ingest, args=(w.settings, f"{w.fleet_id}-extra{i}", readies[i], stop, out))
              for i in range(2)]
    evaluators = []
    try:
        for p in ingest:
            p.start()
        assert all(r.wait(60) for r in readies)
        evaluators = [evaluator_process(pg_url, w.key_path, name, tmp_path / f"{name}.log") for name in ("A", "B")]
        spec = spec_dict(percents=(20, 60, 100), report_timeout_s=8, min_requests=50)
        rid = w.create(spec)
        s = RolloutSpec.from_dict({**spec, "target": {"fleet": w.fleet_id}})
        canary = set(assign_waves(s.assignment_seed, w.sims, s.waves)[0])
        r = w.wait_status(rid, ("paused", "completed"), 90)
        assert r.status == "paused"
        wait_for(lambda: all(t.status == "rolled-back" for t in w.targets(rid) if t.device_id in canary), 30,
                 "canary rolled back")
        decisions = Counter((c.device_id, c.kind) for c in w.commands(rid))
        assert {d for d, _ in decisions} == canary  # nobody outside the canary was commanded
        assert set(decisions.values()) == {1} and {k for _, k in decisions} == {"install", "rollback"}
        assert set(w.installed_versions().values()) == {1}
    finally:
        stop.set()
        stats = [out.get(timeout=30) for p in ingest if p.is_alive() or p.exitcode == 0]
        for p in ingest:
            p.join(15)
        for e in evaluators:
            e.terminate()
            e.wait(10)
        w.stop()
    # the two extra processes really took a share of the telemetry, and nothing was stored twice
    assert all(st["stored"].get("telemetry", 0) > 0 for st in stats) and len(stats) == 2
    assert all(st["duplicates"].get("telemetry", 0) == 0 for st in stats)
