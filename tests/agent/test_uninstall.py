"""Issue 16, decommission: a fleet-signed `uninstall` over the real Mosquitto makes the agent
unload the model, delete its files and report `uninstalled`, while it keeps serving the other
model it holds; a forged uninstall is refused and deletes nothing."""

import time
import uuid

import pytest

from agent.bundle import build_bundle
from agent.keys import load_private_key
from agent.serving import NoModelError
from tests.agent import models
from tests.agent.conftest import BROKER_URL, wait_for
from tests.agent.test_commands import Fleet

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _files(a, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for p in (a.state_dir / "models").iterdir() if p.name.startswith(f"{name}-v"))


def test_uninstall_removes_one_model_and_keeps_serving_the_other(agent_factory, fleet_keys, bundles, model_files,
                                                                  digits, tmp_path) -> None:
    other = tmp_path / "other-v1.bundle"
    build_bundle(other, {"model.onnx": model_files["onnx_v2"]},
                 models.manifest_fields(1, "onnx", "model.onnx", model_files["baseline_v2"], name="other"),
                 load_private_key(fleet_keys["build"]))
    fleet_id = f"u{uuid.uuid4().hex[:8]}"
    a = agent_factory("uninst-1", mqtt_url=BROKER_URL, fleet_id=fleet_id)
    f = Fleet(fleet_id, "uninst-1", fleet_keys["priv"], a)
    try:
        wait_for(a.link.connected.is_set, 15, what="agent connected")
        time.sleep(0.3)
        a.install(bundles["v1"])
        a.install(other, allow_new_name=True)  # active: other v1, held for rollback: digits v1
        assert _files(a, "digits") and _files(a, "other")
        x = digits[0][:2]

        cid = f.send("uninstall", {"model": {"name": "digits"}}, key=load_private_key(fleet_keys["rogue"]))
        assert f.event_for(cid)["details"]["code"] == "bad-signature"
        assert _files(a, "digits")  # nothing deleted by a forged command

        cid = f.send("uninstall", {"model": {"name": "digits"}})
        ev = f.event_for(cid)
        assert ev["kind"] == "uninstalled" and ev["details"]["serving"]["name"] == "other"
        assert len(ev["details"]["removed"]) == 1 and ev["details"]["removed"][0].startswith("digits-v1-")
        assert _files(a, "digits") == [] and _files(a, "other")
        assert a.predict(x)["logits"].shape == (2, 10)  # still serving the other model
        wait_for(lambda: (f.state().get("last_command") or {}).get("id") == cid
                 and f.state().get("previous") is None, 10, what="state without digits")
        assert f.state()["installed"]["name"] == "other"

        cid = f.send("uninstall", {"model": {"name": "../etc"}})
        wait_for(lambda: (a.commands.last_command or {}).get("id") == cid, 10, what="bad name handled")
        assert a.commands.last_command["result"] == "refused" and _files(a, "other")

        cid = f.send("uninstall", {"model": {"name": "other", "version": 1}})
        assert f.event_for(cid)["details"]["serving"] is None
        assert _files(a, "other") == []
        with pytest.raises(NoModelError):
            a.predict(x)
    finally:
        f.close()


def test_fleet_decommission_reaches_a_real_agent(agent_factory, fleet_keys, bundles, tmp_path) -> None:
    """The fleet API sends the signed uninstall to the device class; the agent deletes the files
    and the fleet stores its `uninstalled` event; the catalogue keeps the version, artifacts are
    purged only on request."""
    import json
    import urllib.request

    from sqlmodel import Session, select

    from agent.keys import public_key_to_b64
    from fleet.models import Device, DeviceEvent, ModelVersion
    from fleet.server import FleetServer
    from fleet.settings import FleetSettings

    fleet_id = f"dc{uuid.uuid4().hex[:8]}"
    s = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=BROKER_URL, fleet_id=fleet_id,
                      signing_key_path=fleet_keys["priv"], trusted_build_keys=[fleet_keys["build_pub"]],
                      api_tokens={"op": "operator"}, embedded_broker=False, start_rollouts=True,
                      rollout_interval_s=0.2, drift_interval_s=0)
    srv = FleetServer(s, port=0, drift_evaluator=False).start()
    try:
        a = agent_factory("decom-1", mqtt_url=BROKER_URL, fleet_id=fleet_id)
        with Session(srv.engine) as db:
            db.add(Device(id="decom-1", fleet=fleet_id, device_class="x86-64-generic",
                          public_key=public_key_to_b64(a.device_key.public_key())))
            db.commit()
        wait_for(a.link.connected.is_set, 15, what="agent connected")
        a.install(bundles["v1"])
        assert _files(a, "digits")

        def call(path: str, body: bytes, ctype: str) -> dict:  # type: ignore[type-arg]
            req = urllib.request.Request(srv.url + path, data=body, method="POST",
                                         headers={"Authorization": "Bearer op", "Content-Type": ctype})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        sha = call("/api/models", bundles["v1"].read_bytes(), "application/octet-stream")["bundle_sha256"]
        out = call("/api/models/digits/decommission", json.dumps(
            {"reason": "end of life", "device_class": "x86-64-generic", "purge_artifacts": True}).encode(),
            "application/json")
        assert out["devices"] == ["decom-1"] and out["purged_artifacts"] == [sha]
        wait_for(lambda: _files(a, "digits") == [], 20, what="agent deleted the model files")
        with Session(srv.engine) as db:
            ev = wait_for(lambda: db.exec(select(DeviceEvent).where(DeviceEvent.device_id == "decom-1",
                                                                   DeviceEvent.kind == "uninstalled")).first(),
                          20, what="fleet stored the uninstalled event")
            assert ev.command_id == out["commands"][0] and ev.details["removed"]
            assert db.exec(select(ModelVersion).where(ModelVersion.name == "digits")).first() is not None
        assert not (s.artifacts_dir / sha).exists()
    finally:
        srv.stop()
