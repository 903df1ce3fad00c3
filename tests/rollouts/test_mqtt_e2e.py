"""End to end on the real Mosquitto with simulated devices that speak the agent protocol: the
fleet's real ingest verifies their signed reports, the evaluator publishes signed commands."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from agent.keys import sign_document
from fleet.rollouts.assignment import assign_waves
from fleet.rollouts.spec import RolloutSpec
from tests.rollouts.harness import spec_dict
from tests.rollouts.mqtt_world import MqttWorld
from tests.rollouts.simdevice import Behaviour
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

FAST = {"report_timeout_s": 8, "min_requests": 50}


@pytest.fixture
def world_factory(tmp_path):
    worlds: list[MqttWorld] = []

    def make(**kw) -> MqttWorld:
        w = MqttWorld(tmp_path / f"w{len(worlds)}", **kw)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.stop()


def test_good_version_reaches_every_device_over_mqtt(world_factory):
    w = world_factory(n_devices=10)
    rid = w.create(spec_dict(percents=(10, 50, 100), **FAST))
    r = w.wait_status(rid, ("completed", "paused"), 60)
    assert r.status == "completed", r.reason
    assert set(w.installed_versions().values()) == {2}
    assert all(s.installed["version"] == 2 for s in w.sims.values())
    assert Counter(c.kind for c in w.commands(rid)) == Counter({"install": 10})
    assert all(c.sent_at is not None for c in w.commands(rid))


def test_bad_version_stops_at_the_canary_and_rolls_back_over_mqtt(world_factory):
    w = world_factory(n_devices=10, behaviours={2: Behaviour(drift=True)})
    spec = spec_dict(percents=(20, 60, 100), **FAST)
    rid = w.create(spec)
    s = RolloutSpec.from_dict({**spec, "target": {"fleet": w.fleet_id}})
    canary = set(assign_waves(s.assignment_seed, w.sims, s.waves)[0])
    r = w.wait_status(rid, ("paused", "completed"), 60)
    assert r.status == "paused" and r.reason["gates"][0]["gate"] == "prediction_drift"
    wait_for(lambda: all(t.status == "rolled-back" for t in w.targets(rid) if t.device_id in canary), 20,
             "canary rolled back")
    assert set(w.installed_versions().values()) == {1}
    installs = {c.device_id for c in w.commands(rid) if c.kind == "install"}
    assert installs == canary
    assert all(2 not in [c["model"]["version"] for c in s_.accepted if "model" in c] for d, s_ in w.sims.items()
               if d not in canary)


def test_a_device_that_never_answers_fails_its_wave_over_mqtt(world_factory):
    probe = RolloutSpec.from_dict(spec_dict(percents=(20, 100)))
    w = world_factory(n_devices=10, evaluator=True, silent=())
    canary = assign_waves(probe.assignment_seed, w.sims, probe.waves)[0]
    w.sims[canary[0]].silent = True       # goes dark right before the rollout
    rid = w.create(spec_dict(percents=(20, 100), report_timeout_s=4, min_requests=50))
    r = w.wait_status(rid, ("paused", "completed"), 60)
    assert r.status == "paused"
    assert r.reason["failed_devices"] == [canary[0]]
    assert next(g for g in r.reason["gates"] if g["gate"] == "installs")["detail"]["reasons"] == {"timeout": 1}
    # the answering canary device is back on v1
    wait_for(lambda: w.sims[canary[1]].installed["version"] == 1, 20, "healthy canary device rolled back")


def test_fleet_restart_mid_rollout_resumes_where_it_was(world_factory, tmp_path):
    w = world_factory(n_devices=10, database_url=f"sqlite:///{tmp_path / 'restart.db'}")
    rid = w.create(spec_dict(percents=(10, 50, 100), soak_s=1, **FAST))   # soak: holds wave 1 open for the stop
    wait_for(lambda: w.rollout(rid).current_wave == 1, 40, "second wave")
    before = Counter(c.device_id for c in w.commands(rid) if c.kind == "install")
    holder_before = w.rollout(rid).last_holder
    w.stop_fleet()                                       # the whole fleet manager goes down
    w.start_fleet()                                      # a new process: new evaluator, same database
    assert 1 <= len(before) < 10
    r = w.wait_status(rid, ("completed", "paused"), 60)
    assert r.status == "completed", r.reason
    assert r.last_holder != holder_before
    installs = Counter(c.device_id for c in w.commands(rid) if c.kind == "install")
    assert len(installs) == 10 and set(installs.values()) == {1}
    assert all(s.refused == [] for s in w.sims.values())


def test_forged_and_replayed_commands_are_refused_by_the_device(world_factory):
    w = world_factory(n_devices=2)
    rid = w.create(spec_dict(percents=(100,), **FAST))
    w.wait_status(rid, ("completed",), 40)
    dev = next(iter(w.sims))
    sim = w.sims[dev]
    cmd = next(c for c in w.commands(rid) if c.device_id == dev)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forged = sign_document({**cmd.document["payload"], "seq": cmd.seq + 50}, Ed25519PrivateKey.generate())
    w.devices._client.publish(f"edgefleet/v1/{w.fleet_id}/{dev}/cmd", json.dumps(cmd.document), qos=1)
    w.devices._client.publish(f"edgefleet/v1/{w.fleet_id}/{dev}/cmd", json.dumps(forged), qos=1)
    wait_for(lambda: len(sim.refused) >= 2, 10, "refusals")
    assert sim.refused[:2] == ["stale", "bad-signature"]
    assert sim.installed["version"] == 2
