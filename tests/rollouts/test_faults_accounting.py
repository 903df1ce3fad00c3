"""Issue 20, fleet side, on the in-memory harness (virtual clock, the fleet's real ingest
Processor and evaluator): duplicates of commands are not failures, only the lease holder
publishes, device clocks run from delivery and stop while the fleet is blind, late rollback
confirmations heal, and takeover is fast."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from edgefleet.ops.rollout import render_detail
from fleet.ingest.health import CATCH_UP_S
from fleet.models import DriftAlert
from fleet.rollouts import commands, service
from fleet.rollouts.assignment import assign_waves
from fleet.rollouts.evaluator import EvaluatorConfig
from fleet.rollouts.models import (
    ROLLBACK_UNCONFIRMED,
    WAIT_INGEST_DISCONNECTED,
    IngestHeartbeat,
    RolloutCommand,
)
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


def forget_sent(h: Harness, rid: int) -> None:
    """What a kill -9 after publishing and before committing sent_at leaves behind."""
    with Session(h.engine) as s:
        s.execute(update(RolloutCommand).where(RolloutCommand.rollout_id == rid).values(sent_at=None))
        s.commit()


def open_rollout_alerts(h: Harness, rid: int) -> list[DriftAlert]:
    with Session(h.engine) as s:
        return list(s.exec(select(DriftAlert).where(DriftAlert.reference == f"rollout:{rid}",
                                                    DriftAlert.status == "open")).all())


def heartbeat(h: Harness, at: float, connected: bool, since: float | None = None) -> None:
    with Session(h.engine) as s:
        row = s.get(IngestHeartbeat, "edgefleet-ingest-test") or IngestHeartbeat(name="edgefleet-ingest-test")
        row.connected, row.connected_since, row.updated_at = connected, since, at
        s.add(row)
        s.commit()


@pytest.mark.parametrize("agent_answers_duplicates", [True, False], ids=["agent-duplicate", "old-agent-stale"])
def test_a_republished_command_is_a_duplicate_not_a_failure(engine, tmp_path, agent_answers_duplicates):
    """What was seen 1: the restarted process re-published commands, the devices refused the
    copies as stale (same command_id as their install-ok) and the wave breached."""
    h = Harness(engine, tmp_path, n_devices=10)
    for sim in h.sims.values():
        sim.answer_duplicates = agent_answers_duplicates
    rid = create(h, spec_dict(percents=(20, 100)))
    at = now0()
    h.cycle(at)                               # wave 0 commanded, installed, answered
    forget_sent(h, rid)                       # ... and the process died before recording the publish
    h.evaluator = h.make_evaluator("restarted")
    h.evaluator.tick(at + 10)                 # lease expired: the successor re-publishes
    assert h.deliver(at + 10) >= 2
    assert "stale" in {r for sim in h.sims.values() for r in sim.refused}
    h.run(rid, at + 10)
    r = h.rollout(rid)
    assert r.status == "completed", r.reason
    assert set(installs_per_device(h, rid).values()) == {1}
    assert set(h.installed_versions().values()) == {2}


def test_only_the_lease_holder_publishes_a_rollouts_commands(engine, tmp_path):
    """What was seen 1: `flush_outbox(unowned=True)` in a process that did not hold the lease
    published another process's commands stale for 10 s."""
    h = Harness(engine, tmp_path, n_devices=10)
    create(h, spec_dict(percents=(50, 100)))
    at = now0()
    h.evaluator.publisher = None              # the holder decides, then stalls before publishing
    h.evaluator.tick(at)
    with Session(engine) as s:                # long unsent
        s.execute(update(RolloutCommand).values(created_at=time.time() - 60))
        s.commit()
    other = commands.RecordingPublisher()
    b = h.make_evaluator("other")
    b.publisher = other
    b.tick(at + 1)                            # the lease is still held
    assert other.messages == []
    b.tick(at + 10)                           # expired: now it is the holder, and it publishes
    assert {m[1]["payload"]["kind"] for m in other.messages} == {"install"}
    assert len(other.messages) == 5


def test_a_late_confirmation_heals_rollback_unconfirmed(engine, tmp_path):
    """What was seen 5: a target marked rollback-unconfirmed stayed so after the device confirmed."""
    h = Harness(engine, tmp_path, n_devices=10, behaviours={2: Behaviour(drift=True)})
    spec = spec_dict(percents=(10, 100))
    rid = create(h, spec)
    canary = assign_waves(RolloutSpec.from_dict(spec).assignment_seed, h.sims, RolloutSpec.from_dict(spec).waves)[0]
    at = now0()
    sim = h.sims[canary[0]]
    for _ in range(8):                        # canary installs the bad version, the wave breaches
        h.evaluator.tick(at)
        if h.rollout(rid).status == "paused":
            sim.silent = True                 # ... and its rollback command is not answered in time
        h.deliver(at)
        h.window(at, at + 10)
        at += 10
        if sim.silent:
            break
    assert h.rollout(rid).status == "paused"
    for _ in range(10):
        h.cycle(at)
        at += 10
    t = next(t for t in h.targets(rid) if t.device_id == canary[0])
    assert t.status == "failed" and t.reason.startswith(ROLLBACK_UNCONFIRMED), t.reason
    sim.silent = False                        # it comes back and runs the rollback it was sent
    doc = next(c.document for c in h.commands(rid) if c.kind == "rollback")
    h.ingest(sim.handle(json.dumps(doc).encode(), now=at))
    h.ingest(sim.handle(json.dumps(doc).encode(), now=at))   # a redelivered copy: a duplicate
    assert sim.last_command["result"] == "ok"
    h.evaluator.tick(at)
    t = next(t for t in h.targets(rid) if t.device_id == canary[0])
    assert t.status == "rolled-back", t.reason
    assert h.device(canary[0]).installed_version == 1


def test_device_timeouts_count_from_delivery_not_from_the_decision(engine, tmp_path):
    """What was seen 4: the timeout counted from the decision; commands that could not be
    published for longer than report_timeout_s failed the wave the moment they went out."""
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(50, 100)))
    at = now0()
    h.publisher.fail = True                   # the broker is unreachable: nothing is delivered
    for _ in range(10):                       # 100 s > report_timeout_s (60)
        h.evaluator.tick(at)
        at += 10
    assert {t.status for t in h.targets(rid) if t.wave_index == 0} == {"commanded"}
    h.publisher.fail = False
    h.run(rid, at)
    assert h.rollout(rid).status == "completed", h.rollout(rid).reason


def test_a_blind_fleet_waits_instead_of_failing_and_its_clocks_stop(engine, tmp_path):
    """What was seen 4: while ingest was disconnected the evaluator judged a wave without its
    evidence, timed devices out and kept the soak timer running."""
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(50, 100), soak_s=30))
    at = now0()
    heartbeat(h, at, True, at - 100)
    h.cycle(at)                               # wave 0 commanded and delivered
    out = 0.0
    while h.waves(rid)[0].status != "soaking" and out < 100:
        at += 10
        heartbeat(h, at, True, at - 100)
        h.cycle(at)
        out += 10
    assert h.waves(rid)[0].status == "soaking"
    # the broker goes away for 120 s: no telemetry reaches the fleet, ingest says so
    for _ in range(12):
        at += 10
        heartbeat(h, at, False)
        h.evaluator.tick(at)
    w = h.waves(rid)[0]
    assert w.status == "soaking" and h.rollout(rid).status == "running"
    assert w.last_verdict["waiting"]["kind"] == WAIT_INGEST_DISCONNECTED
    with Session(engine) as s:
        summary = service.rollout_summary(s, h.rollout(rid))
    assert summary["waiting"]["message"].startswith("waiting: ingest disconnected")
    # ... an open alert (one, not one per tick), and the operator CLI says so
    assert [a.summary for a in open_rollout_alerts(h, rid)] == [
        f"rollout {rid} {summary['waiting']['message']}; gates and clocks stopped"]
    with Session(engine) as s:
        shown = render_detail(service.rollout_detail(s, h.rollout(rid)))
    assert "Waiting:  waiting: ingest disconnected" in shown
    # back: the soak timer did not run while blind, so the wave still soaks
    at += 10
    heartbeat(h, at, True, at - CATCH_UP_S - 1)
    h.cycle(at)
    assert h.waves(rid)[0].status == "soaking"
    assert h.waves(rid)[0].last_verdict.get("waiting") is None
    assert open_rollout_alerts(h, rid) == []                  # seeing again resolves the alert
    with Session(engine) as s:
        assert "Waiting:" not in render_detail(service.rollout_detail(s, h.rollout(rid)))
    for _ in range(20):
        at += 10
        heartbeat(h, at, True, at - 100)
        h.cycle(at)
        if h.rollout(rid).status != "running":
            break
    assert h.rollout(rid).status == "completed", h.rollout(rid).reason
    assert set(installs_per_device(h, rid).values()) == {1}


def test_a_crashed_holder_is_replaced_within_the_lease_and_a_stopped_one_at_once(engine, tmp_path):
    """What was seen 6: after a crash rollouts resumed only when a 15 s lease expired."""
    assert EvaluatorConfig().lease_ttl_s <= 5.0
    h = Harness(engine, tmp_path, n_devices=10)
    rid = create(h, spec_dict(percents=(50, 100)))
    at = now0()
    h.evaluator.cfg.lease_ttl_s = EvaluatorConfig().lease_ttl_s
    h.evaluator.tick(at)                      # holder ticks, then dies (no stop())
    b = h.make_evaluator("successor")
    b.cfg.lease_ttl_s = EvaluatorConfig().lease_ttl_s
    assert b.tick_rollout(rid, at + 1) == [] and h.rollout(rid).last_holder == "test-evaluator"
    b.tick_rollout(rid, at + EvaluatorConfig().lease_ttl_s + 0.5)
    assert h.rollout(rid).last_holder == "successor"
    b.stop()                                  # graceful: the lease is released at once
    c = h.make_evaluator("third")
    c.tick_rollout(rid, at + EvaluatorConfig().lease_ttl_s + 1.0)
    assert h.rollout(rid).last_holder == "third"
