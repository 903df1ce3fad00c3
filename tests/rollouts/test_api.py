from __future__ import annotations

import pytest
from sqlmodel import Session, select

from fleet.app import create_app
from fleet.models import AuditEntry
from fleet.settings import FleetSettings
from tests.rollouts.harness import Harness, now0, spec_dict
from tests.rollouts.simdevice import Behaviour

TOKENS = {"adm": "admin", "op": "operator", "view": "viewer"}


@pytest.fixture
def fleet(engine, tmp_path):
    h = Harness(engine, tmp_path, n_devices=10, behaviours={2: Behaviour(latency_us=7000)})
    settings = FleetSettings(data_dir=tmp_path / "fleet", api_tokens=TOKENS, signing_key_path=h.key_path,
                             public_url="http://fleet.test")
    app = create_app(settings, engine=engine)
    return h, app.test_client()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_roles_are_enforced(fleet):
    _, c = fleet
    assert c.get("/api/rollouts").status_code == 401
    assert c.get("/api/rollouts", headers=auth("view")).status_code == 200
    assert c.post("/api/rollouts", json=spec_dict(), headers=auth("view")).status_code == 403
    assert c.post("/api/rollouts/keys/rotate", headers=auth("op")).status_code == 403


def test_invalid_spec_is_a_422_naming_the_field(fleet):
    _, c = fleet
    bad = spec_dict()
    bad["waves"][0]["percent"] = 500
    r = c.post("/api/rollouts", json=bad, headers=auth("op"))
    assert r.status_code == 422 and "percent" in r.get_json()["error"]["message"]


def test_create_follow_breach_and_read_the_reason_through_the_api(fleet):
    h, c = fleet
    r = c.post("/api/rollouts", json=spec_dict(percents=(10, 100)), headers=auth("op"))
    assert r.status_code == 201, r.get_json()
    rid = r.get_json()["id"]
    assert [w["planned"] for w in r.get_json()["waves"]] == [1, 9]
    h.run(rid, now0())
    d = c.get(f"/api/rollouts/{rid}", headers=auth("view")).get_json()
    assert d["status"] == "paused"
    assert d["reason"]["gates"][0]["gate"] == "latency_p99"
    assert d["waves"][0]["status"] == "failed" and d["waves"][0]["targets"] == {"rolled-back": 1}
    assert d["gate_history"] and "latency_p99" in d["gate_history"][-1]["values"]
    breach = [m for m in d["status_history"] if m["event"] == "breach"]
    assert [(m["wave"], m["from"], m["to"]) for m in breach] == [(0, "active", "failed"), (None, "running", "paused")]
    gates = c.get(f"/api/rollouts/{rid}/gates", headers=auth("view")).get_json()["evaluations"]
    assert gates[-1]["status"] == "fail"
    targets = c.get(f"/api/rollouts/{rid}/targets?wave=0", headers=auth("view")).get_json()["targets"]
    dev = targets[0]["device_id"]
    hist = c.get(f"/api/rollouts/{rid}/targets/{dev}/history", headers=auth("view")).get_json()["history"]
    assert [x["to"] for x in hist][:1] == ["commanded"] and hist[-1]["to"] == "rolled-back"
    # console page shows the reason
    page = c.get(f"/console/rollouts/{rid}", headers=auth("view"))
    assert page.status_code == 200 and b"latency_p99" in page.data and b"Gate values over time" in page.data
    assert b"Status history" in page.data and "running → paused".encode() in page.data
    assert c.get("/console/rollouts", headers=auth("view")).status_code == 200
    # operator actions
    assert c.post(f"/api/rollouts/{rid}/approve", headers=auth("op")).status_code == 409
    r = c.post(f"/api/rollouts/{rid}/abort", headers=auth("op"))
    assert r.status_code == 200 and r.get_json()["status"] == "aborted"
    with Session(h.engine) as s:
        acts = [a.action for a in s.exec(select(AuditEntry).where(AuditEntry.target == f"rollout:{rid}"))]
    assert acts[0] == "rollout.create" and "rollout.breach" in acts and acts[-1] == "rollout.abort"


def test_rollback_version_and_key_rotation_endpoints(fleet):
    h, c = fleet
    r = c.post("/api/rollouts/rollback-version", json={"model_name": "digits", "version": 1}, headers=auth("op"))
    assert r.status_code == 200 and r.get_json()["skipped"]      # v1 has no previous version to go to
    assert c.post("/api/rollouts/rollback-version", json={}, headers=auth("op")).status_code == 400
    # a new fleet key reaches devices only inside a root-signed key list (the root key stays offline)
    r = c.post("/api/rollouts/keys/rotate", headers=auth("adm"))
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "keylist-required"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.keylist import make_keylist, sign_keylist
    from agent.keys import generate_keypair, load_private_key

    root = Ed25519PrivateKey.generate()
    new_path, _ = generate_keypair(h.tmp / "keys", "fleet-2")
    doc = sign_keylist(make_keylist(1, {"root": [root.public_key()], "fleet": [
        h.fleet_key.public_key(), load_private_key(new_path).public_key()]}), [root])
    r = c.post("/api/rollouts/keys/rotate", json={"new_key_path": str(new_path), "keylist": doc}, headers=auth("adm"))
    assert r.status_code == 200 and r.get_json()["devices"] == 10
    assert c.get("/api/rollouts/keys/keylist", headers=auth("view")).get_json()["version"] == 1
    r = c.post("/api/rollouts/keys/keylist", json={"keylist": doc}, headers=auth("adm"))   # a replay
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "keylist-stale"
    st = c.get("/api/rollouts/keys", headers=auth("view")).get_json()
    assert st["rotating"] and st["pending_devices"] == 10
    r = c.post("/api/rollouts/keys/finish", json={}, headers=auth("adm"))
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "devices-pending"
    h.evaluator.tick(now0())
    h.deliver(now0())
    assert c.get("/api/rollouts/keys", headers=auth("view")).get_json()["pending_devices"] == 0
    assert c.post("/api/rollouts/keys/finish", json={}, headers=auth("adm")).status_code == 200
