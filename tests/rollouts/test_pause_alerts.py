"""Every pause raises an open alert (issue 18): an operator's pause and the pause a version
rollback causes show in /api/alerts and the overview's count like a gate breach does; resume,
abort, rollback and completion resolve the rollout's open alert. Driven through the REST API."""

from __future__ import annotations

import pytest

from fleet.app import create_app
from fleet.settings import FleetSettings
from tests.rollouts.harness import Harness, now0, spec_dict

TOKENS = {"op": "operator", "view": "viewer"}
OP = {"Authorization": "Bearer op"}
VIEW = {"Authorization": "Bearer view"}


@pytest.fixture
def fleet(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=6)
    settings = FleetSettings(data_dir=tmp_path / "fleet", api_tokens=TOKENS, signing_key_path=h.key_path,
                             public_url="http://fleet.test")
    return h, create_app(settings, engine=engine).test_client()


def rollout_alerts(c, rid: int) -> list[dict]:
    items = c.get("/api/alerts?limit=200", headers=VIEW).get_json()["items"]
    return [a for a in items if a["reference"] == f"rollout:{rid}"]


def open_count(c) -> int:
    return c.get("/api/overview", headers=VIEW).get_json()["open_alerts"]


def test_operator_pause_raises_an_alert_that_resume_and_abort_resolve(fleet):
    _, c = fleet
    rid = c.post("/api/rollouts", json=spec_dict(), headers=OP).get_json()["id"]
    assert rollout_alerts(c, rid) == [] and open_count(c) == 0
    assert c.post(f"/api/rollouts/{rid}/pause", json={"reason": "maintenance window"}, headers=OP).status_code == 200
    [a] = rollout_alerts(c, rid)
    assert a["status"] == "open" and a["level"] == "alert" and "maintenance window" in a["summary"]
    assert open_count(c) == 1
    assert c.post(f"/api/rollouts/{rid}/resume", headers=OP).status_code == 200
    assert [x["status"] for x in rollout_alerts(c, rid)] == ["resolved"] and open_count(c) == 0
    assert c.post(f"/api/rollouts/{rid}/pause", headers=OP).status_code == 200
    assert sorted(x["status"] for x in rollout_alerts(c, rid)) == ["open", "resolved"] and open_count(c) == 1
    assert c.post(f"/api/rollouts/{rid}/abort", headers=OP).status_code == 200
    assert [x["status"] for x in rollout_alerts(c, rid)] == ["resolved", "resolved"] and open_count(c) == 0


def test_version_rollback_pause_raises_an_alert_and_rollback_resolves_it(fleet):
    _, c = fleet
    rid = c.post("/api/rollouts", json=spec_dict(), headers=OP).get_json()["id"]
    r = c.post("/api/rollouts/rollback-version", json={"model_name": "digits", "version": 2}, headers=OP)
    assert r.status_code == 200
    assert c.get(f"/api/rollouts/{rid}", headers=VIEW).get_json()["status"] == "paused"
    [a] = rollout_alerts(c, rid)
    assert a["status"] == "open" and "version-rollback" in a["summary"] and open_count(c) == 1
    assert c.post(f"/api/rollouts/{rid}/rollback", headers=OP).status_code == 200
    assert [x["status"] for x in rollout_alerts(c, rid)] == ["resolved"] and open_count(c) == 0


def test_completion_after_resume_leaves_no_open_alert(fleet):
    h, c = fleet
    rid = c.post("/api/rollouts", json=spec_dict(percents=(50, 100)), headers=OP).get_json()["id"]
    assert c.post(f"/api/rollouts/{rid}/pause", headers=OP).status_code == 200
    assert open_count(c) == 1
    assert c.post(f"/api/rollouts/{rid}/resume", headers=OP).status_code == 200
    h.run(rid, now0())
    assert c.get(f"/api/rollouts/{rid}", headers=VIEW).get_json()["status"] == "completed"
    assert [x["status"] for x in rollout_alerts(c, rid)] == ["resolved"] and open_count(c) == 0
