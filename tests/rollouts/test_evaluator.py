from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, select

from fleet.models import AuditEntry
from fleet.rollouts import service
from fleet.rollouts.assignment import assign_waves
from fleet.rollouts.evaluator import acquire_lease, release_lease
from fleet.rollouts.models import GateEvaluation, TargetStatusChange
from fleet.rollouts.spec import RolloutSpec
from tests.rollouts.harness import Harness, now0, spec_dict
from tests.rollouts.simdevice import Behaviour


def create(h: Harness, spec: dict) -> int:
    with Session(h.engine) as s:
        r = service.create_rollout(s, spec, "tester")
        s.commit()
        return r.id


def installs_per_device(h: Harness, rid: int) -> Counter:
    return Counter(c.device_id for c in h.commands(rid) if c.kind == "install")


def test_good_version_advances_through_every_wave_to_100_percent(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=20)
    rid = create(h, spec_dict(percents=(5, 25, 50, 100)))
    h.run(rid, now0())
    r = h.rollout(rid)
    assert r.status == "completed", r.reason
    assert set(h.installed_versions().values()) == {2}
    assert [w.status for w in h.waves(rid)] == ["passed"] * 4
    assert [w.planned for w in h.waves(rid)] == [1, 4, 5, 10]
    assert all(t.status == "healthy" for t in h.targets(rid))
    assert set(installs_per_device(h, rid).values()) == {1}     # each device commanded exactly once
    with Session(engine) as s:
        actions = [a.action for a in s.exec(select(AuditEntry).where(AuditEntry.target == f"rollout:{rid}"))]
        assert actions.count("rollout.wave.passed") == 4 and "rollout.completed" in actions
        evals = s.exec(select(GateEvaluation).where(GateEvaluation.rollout_id == rid)).all()
        assert {e.wave_index for e in evals} == {0, 1, 2, 3}
        assert any(r["gate"] == "latency_p99" and r["value"] is not None for e in evals for r in e.results)


@pytest.mark.parametrize("behaviour, gate", [
    (Behaviour(latency_us=6000), "latency_p99"),
    (Behaviour(error_rate=0.3), "errors"),
    (Behaviour(drift=True), "prediction_drift"),
    (Behaviour(install_fails=True), "installs"),
])
def test_bad_version_is_stopped_at_the_canary_and_rolled_back(engine, tmp_path, behaviour, gate):
    h = Harness(engine, tmp_path, n_devices=20, behaviours={2: behaviour})
    spec = spec_dict(percents=(10, 50, 100))
    rid = create(h, spec)
    canary = set(assign_waves(RolloutSpec.from_dict(spec).assignment_seed, h.sims, RolloutSpec.from_dict(
        spec).waves)[0])
    h.run(rid, now0())
    r = h.rollout(rid)
    assert r.status == "paused"
    assert r.reason["wave"] == 0 and gate in [g["gate"] for g in r.reason["gates"]]
    assert r.reason["evidence"]["candidate"]["devices"] >= (0 if gate == "installs" else 1)
    # never reached a device outside the canary wave
    assert set(installs_per_device(h, rid)) == canary
    # every device is on the previous version again, from its own signed state
    assert set(h.installed_versions().values()) == {1}
    assert all(h.sims[d].installed["version"] == 1 for d in canary)
    assert {t.status for t in h.targets(rid) if t.device_id in canary} == {"rolled-back"}
    assert {t.status for t in h.targets(rid) if t.device_id not in canary} == {"pending"}
    with Session(engine) as s:
        breach = s.exec(select(AuditEntry).where(AuditEntry.action == "rollout.breach")).one()
        assert breach.after["gates"][0]["gate"] in ("installs", gate)
        hist = s.exec(select(TargetStatusChange).where(TargetStatusChange.rollout_id == rid)).all()
        seen = {x.to_status for x in hist}
        assert {"commanded", "rolled-back"} <= seen
        if gate != "installs":   # a failed install never left v1: nothing to send, marked rolled back at once
            assert "rolling-back" in seen


def test_a_device_that_never_answers_fails_its_wave_instead_of_stalling_it(engine, tmp_path):
    spec = spec_dict(percents=(15, 100), report_timeout_s=25)
    seed_spec = RolloutSpec.from_dict(spec)
    ids = [f"dev-{i:04d}" for i in range(20)]
    mute = assign_waves(seed_spec.assignment_seed, ids, seed_spec.waves)[0][0]
    h = Harness(engine, tmp_path, n_devices=20, silent=[mute])
    rid = create(h, spec)
    h.run(rid, now0(), max_cycles=10)
    r = h.rollout(rid)
    assert r.status == "paused"
    assert r.reason["failed_devices"] == [mute]
    installs = next(g for g in r.reason["gates"] if g["gate"] == "installs")
    assert installs["detail"]["reasons"] == {"timeout": 1}
    # it still gets a rollback queued behind the install: if it wakes up it ends on v1 again
    assert [c.kind for c in h.commands(rid) if c.device_id == mute] == ["install", "rollback"]
    # the rollback is never confirmed by a signed state, so it is not counted as done
    target = next(t for t in h.targets(rid) if t.device_id == mute)
    assert target.status == "rolling-back"
    h.evaluator.tick(now0() + 500)
    target = next(t for t in h.targets(rid) if t.device_id == mute)
    assert target.status == "failed" and target.reason.startswith("rollback-unconfirmed")
    h.sims[mute].silent = False                      # it wakes up and gets both commands, in order
    h.delivered = 0
    h.deliver(now0() + 501)
    assert h.sims[mute].installed["version"] == 1


def test_a_silent_device_within_the_failure_budget_does_not_block_the_rollout(engine, tmp_path):
    spec = spec_dict(percents=(20, 100), report_timeout_s=25, max_failure_fraction=0.34, min_success=0.6,
                     min_reporting=0.6)
    seed_spec = RolloutSpec.from_dict(spec)
    ids = [f"dev-{i:04d}" for i in range(15)]
    mute = assign_waves(seed_spec.assignment_seed, ids, seed_spec.waves)[0][0]
    h = Harness(engine, tmp_path, n_devices=15, silent=[mute])
    rid = create(h, spec)
    h.run(rid, now0(), max_cycles=15)
    assert h.rollout(rid).status == "completed"
    assert next(t for t in h.targets(rid) if t.device_id == mute).status == "failed"


def test_a_restarted_evaluator_resumes_mid_rollout_without_repeating_commands(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=20)
    rid = create(h, spec_dict(percents=(5, 25, 50, 100)))
    t = now0()
    for _ in range(2):
        h.cycle(t)
        t += 10
    assert h.rollout(rid).current_wave == 1
    sent_before = len(h.commands(rid))
    # "restart": a new process (other holder) takes over once the old lease expired
    h.evaluator = h.make_evaluator(holder="after-restart")
    assert h.evaluator.tick(t - 7) == []          # the old process's lease (5 s, taken at t-10) still holds
    assert h.rollout(rid).current_wave == 1
    h.run(rid, t)
    assert h.rollout(rid).status == "completed"
    assert len(h.commands(rid)) > sent_before
    assert set(installs_per_device(h, rid).values()) == {1}


def test_human_approval_holds_the_next_wave(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    spec = spec_dict(percents=(10, 100))
    spec["waves"][0]["gates"] = {"require_approval": True}
    rid = create(h, spec)
    t = h.run(rid, now0())
    assert h.rollout(rid).status == "awaiting-approval"
    for _ in range(3):
        h.cycle(t)
        t += 10
    assert h.rollout(rid).current_wave == 0 and len(installs_per_device(h, rid)) == 1
    with Session(engine) as s:
        service.approve(s, rid, "alice")
        s.commit()
    h.run(rid, t)
    assert h.rollout(rid).status == "completed"
    assert h.waves(rid)[0].approved_by == "alice"


def test_a_wave_awaiting_approval_survives_pause_and_resume(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    spec = spec_dict(percents=(10, 100))
    spec["waves"][0]["gates"] = {"require_approval": True}
    rid = create(h, spec)
    t = h.run(rid, now0())
    with Session(engine) as s:
        service.pause(s, rid, "bob", "change freeze")
        s.commit()
        with pytest.raises(service.RolloutError, match="rollout is paused"):
            service.pause(s, rid, "bob")                   # the table has no pause from paused: 409
        service.resume(s, rid, "bob")
        s.commit()
    assert h.rollout(rid).status == "running" and h.waves(rid)[0].status == "awaiting-approval"
    with Session(engine) as s:
        service.approve(s, rid, "alice")
        s.commit()
    h.run(rid, t)
    assert h.rollout(rid).status == "completed"


def test_soak_time_keeps_a_healthy_wave_waiting(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(10, 100), soak_s=35))
    t = now0()
    seen = []
    for _ in range(12):
        h.cycle(t)
        t += 10
        seen.append((h.waves(rid)[0].status, h.rollout(rid).current_wave))
    assert ("soaking", 0) in seen
    soak_ticks = sum(1 for st, _ in seen if st == "soaking")
    assert soak_ticks >= 3
    assert h.rollout(rid).status == "completed"


def test_shadow_first_then_promote(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    spec = spec_dict(percents=(20, 100))
    spec["waves"][0]["mode"] = "shadow"
    rid = create(h, spec)
    h.run(rid, now0())
    assert h.rollout(rid).status == "completed"
    kinds = Counter(c.kind for c in h.commands(rid))
    assert kinds["shadow"] == 2 and kinds["install"] == 10
    with Session(engine) as s:
        evals = s.exec(select(GateEvaluation).where(GateEvaluation.rollout_id == rid,
                                                    GateEvaluation.wave_index == 0)).all()
        shadow = [r for e in evals for r in e.results if r["gate"] == "shadow_agreement"]
        assert shadow and shadow[-1]["status"] == "pass"
        assert s.exec(select(AuditEntry).where(AuditEntry.action == "rollout.wave.promote")).first()


def test_drifting_shadow_candidate_is_stopped_and_never_served(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10, behaviours={2: Behaviour(drift=True)})
    spec = spec_dict(percents=(20, 100))
    spec["waves"][0]["mode"] = "shadow"
    rid = create(h, spec)
    h.run(rid, now0())
    r = h.rollout(rid)
    assert r.status == "paused" and r.reason["phase"] == "shadow"
    assert {"shadow_agreement", "prediction_drift"} & {g["gate"] for g in r.reason["gates"]}
    kinds = Counter(c.kind for c in h.commands(rid))
    assert kinds["install"] == 0 and kinds["stop-candidate"] == 2
    assert all(s.candidate is None and s.installed["version"] == 1 for s in h.sims.values())


def test_local_rollback_on_the_device_fails_the_wave(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(20, 100), soak_s=100))
    t = now0()
    for _ in range(3):
        h.cycle(t)
        t += 10
    canary = [d for d, n in installs_per_device(h, rid).items()]
    sim = h.sims[canary[0]]
    sim.installed, sim.previous = sim.previous, sim.installed      # the agent rolled back by itself
    h.ingest([sim.state(t)])
    h.run(rid, t)
    r = h.rollout(rid)
    assert r.status == "paused"
    assert r.reason["failed_devices"] == [canary[0]]
    assert "local-rollback" in next(g for g in r.reason["gates"] if g["gate"] == "installs")["detail"]["reasons"]


def test_lease_is_exclusive_until_it_expires(engine):
    assert acquire_lease(engine, "rollout:1", "a", 10, at=100)
    assert not acquire_lease(engine, "rollout:1", "b", 10, at=105)
    assert acquire_lease(engine, "rollout:1", "a", 10, at=105)          # renewal
    assert acquire_lease(engine, "rollout:1", "b", 10, at=116)          # expired: taken over
    assert not acquire_lease(engine, "rollout:1", "a", 10, at=117)
    release_lease(engine, "rollout:1", "b")
    assert acquire_lease(engine, "rollout:1", "a", 10, at=118)


def test_ab_split_compares_the_candidate_share_before_promoting(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    spec = spec_dict(percents=(20, 100), min_requests=30)
    spec["waves"][0].update(mode="ab", fraction=0.25)
    rid = create(h, spec)
    h.run(rid, now0())
    assert h.rollout(rid).status == "completed"
    kinds = Counter(c.kind for c in h.commands(rid))
    assert kinds["ab"] == 2 and kinds["install"] == 10
    ab_cmd = next(c for c in h.commands(rid) if c.kind == "ab")
    assert ab_cmd.document["payload"]["share"] == 0.25


def test_ab_split_with_an_error_prone_candidate_is_stopped(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10, behaviours={2: Behaviour(error_rate=0.4)})
    spec = spec_dict(percents=(20, 100), min_requests=30)
    spec["waves"][0].update(mode="ab", fraction=0.25)
    rid = create(h, spec)
    h.run(rid, now0())
    r = h.rollout(rid)
    assert r.status == "paused" and r.reason["phase"] == "ab"
    assert "errors" in [g["gate"] for g in r.reason["gates"]]
    assert all(s.candidate is None for s in h.sims.values())
    assert Counter(c.kind for c in h.commands(rid))["install"] == 0
