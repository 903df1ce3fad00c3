"""A rollout in flight survives a spec schema change: its stored spec is read leniently and
migrated on every tick, and its moves are all in the status history."""

from __future__ import annotations

from sqlmodel import Session

from fleet.rollouts import service
from fleet.rollouts.machine import history
from fleet.rollouts.models import Rollout
from tests.rollouts.harness import Harness, now0, spec_dict


def test_a_rollout_stored_with_the_old_spec_shape_runs_to_completion(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10)
    with Session(engine) as s:
        rid = service.create_rollout(s, spec_dict(percents=(20, 100)), "tester").id
        s.commit()
    with Session(engine) as s:   # what a fleet before schema versions stored, plus keys it never knew
        r = s.get(Rollout, rid)
        old = {k: v for k, v in r.spec.items() if k != "schema_version"}
        old["waves"] = [{**w, "gates": {("success_threshold" if k == "min_success" else k): v
                                        for k, v in w["gates"].items() if k != "enabled"} | {"max_vibes": 1}}
                        for w in old["waves"]]
        old["waves"][0]["gates"].update(require_approval=True, success_threshold=0.5)
        old["waves"][1]["gates"].pop("soak_s")
        r.spec = {**old, "from_the_future": True}
        s.add(r)
        s.commit()
    t = h.run(rid, now0())
    assert h.rollout(rid).status == "awaiting-approval"      # the renamed wave gates were read
    with Session(engine) as s:
        service.approve(s, rid, "alice")                     # reads require_approval through the typed spec
        s.commit()
    h.run(rid, t)
    assert h.rollout(rid).status == "completed"
    with Session(engine) as s:
        moves = [(m.wave_index, m.event, m.to_status) for m in history(s, rid)]
        shown = service.rollout_detail(s, s.get(Rollout, rid))["status_history"]   # API and console
        assert [(m["wave"], m["event"], m["to"]) for m in shown] == moves
        assert "success_threshold" in s.get(Rollout, rid).spec["waves"][0]["gates"]   # stored as it was
    assert moves[:3] == [(0, "start", "active"), (0, "soak", "soaking"), (0, "await-approval", "awaiting-approval")]
    assert (None, "await-approval", "awaiting-approval") in moves and (None, "approve", "running") in moves
    assert moves[-2:] == [(1, "pass", "passed"), (None, "complete", "completed")]
