"""The same state machine on PostgreSQL, and concurrent evaluators that must never act twice."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlmodel import Session

from fleet.rollouts import service
from fleet.rollouts.evaluator import Evaluator, EvaluatorConfig
from tests.rollouts.harness import Harness, now0, spec_dict
from tests.rollouts.simdevice import Behaviour

pytestmark = pytest.mark.postgres


def create(h: Harness, spec: dict) -> int:
    with Session(h.engine) as s:
        r = service.create_rollout(s, spec, "tester")
        s.commit()
        return r.id


def test_good_and_bad_rollouts_on_postgres(pg_engine, tmp_path):
    h = Harness(pg_engine, tmp_path, n_devices=12, behaviours={3: Behaviour(drift=True)})
    rid = create(h, spec_dict(percents=(10, 50, 100)))
    t = h.run(rid, now0())
    assert h.rollout(rid).status == "completed"
    assert set(h.installed_versions().values()) == {2}
    rid3 = create(h, spec_dict(version=3, percents=(10, 50, 100)))
    h.run(rid3, t + 10)
    r = h.rollout(rid3)
    assert r.status == "paused" and r.reason["gates"][0]["gate"] == "prediction_drift"
    assert set(h.installed_versions().values()) == {2}      # canary back on v2, the rest never left it


def test_concurrent_evaluators_never_act_twice_on_postgres(pg_engine, tmp_path):
    """Four evaluator threads tick the same rollout as fast as they can with leases that expire at
    once, so only the row lock (FOR UPDATE SKIP LOCKED) stands between them."""
    h = Harness(pg_engine, tmp_path, n_devices=20)
    rid = create(h, spec_dict(percents=(5, 25, 50, 100)))
    evaluators = [Evaluator(pg_engine, h.publisher, h.signer,
                            EvaluatorConfig(public_url="http://fleet.test", holder=f"p{i}", lease_ttl_s=0.0,
                                            record_every_s=0.0)) for i in range(4)]
    t = now0()
    errors: list[BaseException] = []
    for _ in range(12):
        barrier = threading.Barrier(len(evaluators))

        def run(ev: Evaluator, at: float, i: int, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                for k in range(3):
                    ev.tick(at + k * 0.01 + i * 0.001)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(ev, t, i, barrier)) for i, ev in enumerate(evaluators)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        h.deliver(t)
        h.window(t, t + 10)
        t += 10
        if h.rollout(rid).status == "completed":
            break
    assert not errors
    assert h.rollout(rid).status == "completed"
    installs = Counter(c.device_id for c in h.commands(rid) if c.kind == "install")
    assert len(installs) == 20 and set(installs.values()) == {1}
    published = Counter(m[1]["payload"]["device"] for m in h.publisher.messages)
    assert set(published.values()) == {1}          # each command published exactly once
    assert all(sim.refused == [] for sim in h.sims.values())


def test_evaluators_starting_together_register_the_fleet_key_once(pg_engine, tmp_path):
    """Two processes starting on an empty key table must both come up (one INSERT wins)."""
    from sqlmodel import select

    from agent.keys import generate_keypair, key_id, load_private_key
    from fleet.rollouts import commands
    from fleet.rollouts.models import FleetKey

    key, _ = generate_keypair(tmp_path / "k", "fleet")
    barrier = threading.Barrier(4)
    signers, errors = [], []

    def start() -> None:
        try:
            with Session(pg_engine) as s:
                barrier.wait()
                signers.append(commands.load_signer(s, key))
                s.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {sg.active_id for sg in signers} == {key_id(load_private_key(key))}
    with Session(pg_engine) as s:
        assert len(s.exec(select(FleetKey)).all()) == 1
