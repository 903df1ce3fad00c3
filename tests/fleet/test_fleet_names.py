"""Issue 12, seen 2 on the fleet side: the agent's one name grammar (agent/names.py) holds at
enrolment (device ids) and at upload (a signed bundle named "../../PWNED_name" was accepted, 201)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.devsim import SimDevice
from tests.agent.forge import forge_bundle


@pytest.mark.parametrize("device_id", ["../../x", "a/b", "Cam-7", "x" * 64, "a..b", ".hidden"])
def test_enrolment_refuses_device_ids_outside_the_grammar(fleet, device_id: str) -> None:  # type: ignore[no-untyped-def]
    tok = fleet.client.post("/api/enrolment-tokens", headers=fleet.h("operator"), json={}).json["token"]
    r = fleet.client.post("/api/enrol", json={"token": tok, "public_key": SimDevice("x").public_key_b64,
                                              "device_id": device_id})
    assert r.status_code == 400, r.json
    assert "device_id" in r.get_data(as_text=True)


def test_upload_refuses_a_signed_bundle_with_a_traversal_name(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x08" + bytes(64))
    fields = {"model": {"name": "../../PWNED_name", "version": 1, "device_class": "x86-64-generic",
                        "format": "onnx", "precision": "fp32"},
              "entrypoint": "model.onnx", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
              "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}], "metrics": {},
              "provenance": {}, "drift_baseline": {}}
    bundle = forge_bundle(tmp_path / "pwn.bundle", {"model.onnx": model}, fields, fleet.build_key)
    r = fleet.client.post("/api/models", headers=fleet.h("operator"), data=bundle.read_bytes(),
                          content_type="application/octet-stream")
    assert r.status_code == 400, r.get_data(as_text=True)
    assert "bad-name" in r.get_data(as_text=True)
    assert not list(tmp_path.rglob("*PWNED*"))
