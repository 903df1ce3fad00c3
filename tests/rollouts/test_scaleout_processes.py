"""Two evaluator processes (`python -m fleet.rollouts.evaluator`) on one PostgreSQL database and
the real Mosquitto: the one holding the lease is killed mid-rollout, the other takes over, and
no decision is ever made twice (one signed command per device and decision)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, select

from fleet.rollouts.models import EvaluatorLease
from tests.rollouts.harness import spec_dict
from tests.rollouts.mqtt_world import MqttWorld
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def evaluator_process(url: str, key: Path, holder: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet.rollouts.evaluator", "--database-url", url, "--key", str(key),
         "--interval", "0.1", "--lease-ttl", "1.5", "--holder", holder, "--record-every", "1"],
        cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO), "EDGEFLEET_LOG_LEVEL": "INFO"})


def test_two_evaluator_processes_never_act_twice(pg_url, tmp_path):
    w = MqttWorld(tmp_path / "w", n_devices=10, database_url=pg_url, evaluator=False)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name in ("A", "B"):
            procs[name] = evaluator_process(pg_url, w.key_path, name, tmp_path / f"{name}.log")
        rid = w.create(spec_dict(percents=(10, 30, 60, 100), report_timeout_s=8, min_requests=50, soak_s=1))
        wait_for(lambda: w.rollout(rid).current_wave >= 1, 60, "second wave")

        def holder() -> str:
            with Session(w.engine) as s:
                return s.exec(select(EvaluatorLease).where(EvaluatorLease.name == f"rollout:{rid}")).one().holder

        first = holder()
        procs[first].send_signal(signal.SIGKILL)          # crash the process that holds the lease
        procs[first].wait(10)
        r = w.wait_status(rid, ("completed", "paused"), 90)
        assert r.status == "completed", r.reason
        other = "B" if first == "A" else "A"
        assert holder() == other and w.rollout(rid).last_holder == other
        installs = Counter(c.device_id for c in w.commands(rid) if c.kind == "install")
        assert len(installs) == 10 and set(installs.values()) == {1}
        # one decision, one signed command per device: distinct command ids, each device exactly one.
        # Delivery is at least once: a process killed between publishing and recording it leaves the
        # row for the survivor to publish again; such a copy is the same signed document (same id and
        # seq) and the device's CommandGuard refuses it as stale.
        distinct = Counter(dev for dev in {(d, doc["payload"]["id"]) for _, d, doc in w.devices.commands})
        assert len(distinct) == 10 and set(distinct.values()) == {1}, distinct
        copies = len(w.devices.commands) - len({(d, doc["payload"]["id"]) for _, d, doc in w.devices.commands})
        refused = [r for s in w.sims.values() for r in s.refused]
        assert refused == ["stale"] * copies
        assert set(w.installed_versions().values()) == {2}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        w.stop()
