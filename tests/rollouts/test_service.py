from __future__ import annotations

from collections import Counter

import pytest
from sqlmodel import Session, select

from fleet.models import AuditEntry
from fleet.rollouts import service
from fleet.rollouts.spec import TargetFilter
from tests.rollouts.harness import Harness, now0, spec_dict
from tests.rollouts.simdevice import Behaviour


def create(h: Harness, spec: dict) -> int:
    with Session(h.engine) as s:
        r = service.create_rollout(s, spec, "tester")
        s.commit()
        return r.id


def audit_actions(engine) -> list[str]:
    with Session(engine) as s:
        return [a.action for a in s.exec(select(AuditEntry).order_by(AuditEntry.id))]


def test_target_filter_and_missing_builds_limit_the_devices(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=12)
    spec = spec_dict(percents=(100,))
    spec["target"] = {"tags": ["lab"], "attributes": {"region": "eu"}}
    rid = create(h, spec)
    targeted = {t.device_id for t in h.targets(rid)}
    expected = {f"dev-{i:04d}" for i in range(12) if i % 2 and i % 3}
    assert targeted == expected
    with Session(engine) as s, pytest.raises(service.RolloutError) as exc:
        service.create_rollout(s, spec_dict(), "tester")
    assert exc.value.code == "rollout-in-progress"
    with Session(engine) as s, pytest.raises(service.RolloutError) as exc:
        service.create_rollout(s, spec_dict(version=7), "tester")
    assert exc.value.code == "unknown-model"


def test_resume_after_a_breach_retries_the_wave(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10, behaviours={2: Behaviour(latency_us=8000)})
    rid = create(h, spec_dict(percents=(20, 100)))
    t = h.run(rid, now0())
    assert h.rollout(rid).status == "paused"
    # the operator "fixes" the device-side problem: v2 is fast now
    for sim in h.sims.values():
        sim.behaviours = {}
    with Session(engine) as s:
        service.resume(s, rid, "bob")
        s.commit()
    assert h.rollout(rid).reason is None
    h.run(rid, t + 10)
    assert h.rollout(rid).status == "completed"
    assert "rollout.resume" in audit_actions(engine)


def test_abort_cancels_queued_commands_and_stops(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(50, 100)))
    h.evaluator.publisher = None       # commands stay queued
    h.evaluator.tick(now0())
    with Session(engine) as s:
        service.abort(s, rid, "carol")
        s.commit()
    from fleet.rollouts.commands import flush_outbox
    assert flush_outbox(engine, h.publisher) == 0
    assert h.evaluator.tick(now0() + 10) == []
    assert h.rollout(rid).status == "aborted"
    with Session(engine) as s:
        entry = s.exec(select(AuditEntry).where(AuditEntry.action == "rollout.abort")).one()
        assert entry.after["cancelled_commands"] == 5 and entry.actor == "carol"


def test_operator_rollback_of_a_completed_rollout_restores_every_device(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(50, 100)))
    t = h.run(rid, now0())
    assert set(h.installed_versions().values()) == {2}
    with Session(engine) as s:
        res = service.rollback_rollout(s, rid, "dave", h.signer)
        s.commit()
    assert res["commands"] == 10
    h.evaluator.tick(t)
    h.deliver(t)
    h.evaluator.tick(t + 1)
    assert set(h.installed_versions().values()) == {1}
    assert {x.status for x in h.targets(rid)} == {"rolled-back"}
    assert h.rollout(rid).status == "rolled-back"


def test_rollback_a_version_for_one_cohort_with_one_call(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=12)
    rid = create(h, spec_dict(percents=(100,)))
    t = h.run(rid, now0())
    assert set(h.installed_versions().values()) == {2}
    with Session(engine) as s:
        res = service.rollback_version(s, "digits", 2, "erin", h.signer,
                                       TargetFilter(attributes={"region": "us"}))
        s.commit()
    us = {f"dev-{i:04d}" for i in range(12) if i % 3 == 0}
    assert set(res["devices"]) == us
    h.evaluator.tick(t)          # publishes the unowned operator commands
    h.deliver(t)
    versions = h.installed_versions()
    assert {d for d, v in versions.items() if v == 1} == us
    assert Counter(versions.values()) == Counter({2: 8, 1: 4})
    with Session(engine) as s:
        res = service.rollback_version(s, "digits", 2, "erin", h.signer)   # fleet-wide
        s.commit()
    assert res["commands"] == 8
    h.evaluator.tick(t + 1)
    h.deliver(t + 1)
    assert set(h.installed_versions().values()) == {1}
    assert audit_actions(engine).count("rollout.rollback-version") == 2


def test_operator_pause_stops_progress_until_resumed(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(10, 100)))
    t = now0()
    h.cycle(t)
    with Session(engine) as s:
        service.pause(s, rid, "frank", "maintenance")
        s.commit()
    for i in range(4):
        h.cycle(t + 10 * (i + 1))
    assert h.rollout(rid).current_wave == 0 and h.rollout(rid).status == "paused"
    with Session(engine) as s:
        service.resume(s, rid, "frank")
        s.commit()
    h.run(rid, t + 60)
    assert h.rollout(rid).status == "completed"
