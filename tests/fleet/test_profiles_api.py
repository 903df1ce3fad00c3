"""POST/GET /api/profiles (issue 13 item 8) on SQLite and PostgreSQL: a candidate bundle is
verified (build key), a fleet-signed `benchmark` command goes to an online device of its class,
and the device's signed answer (a DeviceEvent) is the profile's result; a forged copy the device
refused as unverified is never taken as its answer."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

from agent.bundle import build_bundle
from agent.keys import Keyring, verify_document
from fleet.models import Device, DeviceEvent
from fleet.registry.fleet_keys import signing_key_path
from fleet.rollouts.models import RolloutCommand

CLASS = "x86-64-generic"


def _candidate(path: Path, key: Ed25519PrivateKey) -> bytes:
    model = path.with_suffix(".onnx")
    model.write_bytes(b"ONNX-STANDIN-candidate")
    build_bundle(path, {"model.onnx": model}, {
        "model": {"name": "profile-candidate", "version": 0, "device_class": CLASS, "format": "onnx",
                  "precision": "int8"},
        "entrypoint": "model.onnx", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}], "metrics": {}, "provenance": {},
        "drift_baseline": {}}, key)
    return path.read_bytes()


def test_profiles_api(fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    c, op = fleet.client, fleet.h("operator")
    good = _candidate(tmp_path / "c.bundle", fleet.build_key)
    r = c.post("/api/profiles", headers=op, data=b"not a bundle")
    assert r.status_code == 422 and r.json["error"]["code"].startswith("bundle-")
    r = c.post("/api/profiles", headers=op, data=_candidate(tmp_path / "x.bundle", Ed25519PrivateKey.generate()))
    assert r.status_code == 422 and r.json["error"]["code"] == "bundle-unknown-key"
    r = c.post("/api/profiles", headers=fleet.h("viewer"), data=good)
    assert r.status_code == 403
    r = c.post("/api/profiles", headers=op, data=good)   # the class has no device online
    assert r.status_code == 409 and r.json["error"]["code"] == "no-device-online"
    assert f"no device of class {CLASS} is online" in r.json["error"]["message"]
    r = c.post("/api/profiles?runs=0", headers=op, data=good)
    assert r.status_code == 400 and "runs" in r.json["error"]["message"]

    fid = fleet.settings.fleet_id
    with Session(fleet.ctx.engine) as db:
        db.add(Device(id="d-off", fleet=fid, device_class=CLASS, public_key="", online=False, last_seen=time.time()))
        db.add(Device(id="d-on", fleet=fid, device_class=CLASS, public_key="", online=True, last_seen=time.time() - 5))
        db.add(Device(id="d-other", fleet=fid, device_class="nvidia-jetson", public_key="", online=True))
        db.commit()
    r = c.post("/api/profiles?runs=30&warmup=2", headers=op, data=good)
    assert r.status_code == 202, r.json
    job = r.json
    assert job["device_id"] == "d-on" and job["status"] == "pending" and job["runs"] == 30
    pid = job["id"]
    with Session(fleet.ctx.engine) as db:
        cmd = db.exec(select(RolloutCommand).where(RolloutCommand.command_id == pid)).one()
        assert cmd.kind == "benchmark" and cmd.device_id == "d-on" and cmd.rollout_id is None
    from agent.keys import load_private_key

    fleet_pub = load_private_key(signing_key_path(fleet.settings)).public_key()
    payload = verify_document(cmd.document, Keyring.from_public_keys([fleet_pub]))   # fleet-signed
    assert payload["candidate"]["bundle_sha256"] == job["candidate"]["bundle_sha256"]
    assert payload["candidate"]["url"].endswith(f"/artifacts/{job['candidate']['bundle_sha256']}")
    assert (payload["runs"], payload["warmup"]) == (30, 2)
    assert c.get(f"/artifacts/{job['candidate']['bundle_sha256']}").data == good   # what the device downloads

    assert c.get(f"/api/profiles/{pid}", headers=fleet.h("viewer")).json["status"] == "pending"
    assert c.get("/api/profiles/nope", headers=fleet.h("viewer")).status_code == 404
    with Session(fleet.ctx.engine) as db:
        db.add(DeviceEvent(device_id="d-on", seq=1, time=time.time(), kind="command-refused", command_id=pid,
                           reason="bad-signature", details={"unverified": True, "signature": "untrusted-key"}))
        db.commit()
    assert c.get(f"/api/profiles/{pid}", headers=fleet.h("viewer")).json["status"] == "pending"
    with Session(fleet.ctx.engine) as db:
        db.add(DeviceEvent(device_id="d-on", seq=2, time=time.time(), kind="benchmark-result", command_id=pid,
                           details={"p50_ms": 1.5, "p99_ms": 2.5, "runs": 30}))
        db.commit()
    got = c.get(f"/api/profiles/{pid}", headers=fleet.h("viewer")).json
    assert got["status"] == "done" and got["result"]["p99_ms"] == 2.5 and got["device_id"] == "d-on"

    # the compiler discards the candidate once it has its numbers; the answer stays
    store = fleet.settings.artifacts_dir / job["candidate"]["bundle_sha256"]
    assert store.exists()
    assert c.delete(f"/api/profiles/{pid}", headers=fleet.h("viewer")).status_code == 403
    r = c.delete(f"/api/profiles/{pid}", headers=op)
    assert r.status_code == 200 and r.json["artifact_deleted"] is True and not store.exists()
    assert c.get(f"/api/profiles/{pid}", headers=fleet.h("viewer")).json["status"] == "done"
    assert c.delete("/api/profiles/nope", headers=op).status_code == 404
