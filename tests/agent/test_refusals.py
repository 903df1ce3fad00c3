"""Issue 12, seen 7: accepted though wrong. An arm64 bundle on an x86 agent (a warning only), a
manifest saying openvino for an ONNX file, negative input shapes, unknown dtypes (a traceback).
Each is now a refusal: class, shapes and dtypes before any payload byte is unpacked, the format
against the file's magic before load; the device keeps serving its model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.bundle import BundleError, build_bundle, verify_bundle
from agent.keys import Keyring, load_private_key, load_public_key
from agent.lifecycle import InstallError
from tests.agent import models
from tests.agent.forge import forge_bundle


def _fields(**model: Any) -> dict[str, Any]:
    f = models.manifest_fields(2, "onnx", "model.onnx", {})
    f["model"].update(model)
    return f


def _install_refused(a, bundle: Path, reason: str, digits) -> InstallError:  # type: ignore[no-untyped-def]
    with pytest.raises(InstallError) as err:
        a.install(bundle)
    assert err.value.reason == reason, str(err.value)
    assert a.predictor.active.version == 1  # still serving the last good model
    assert a.predict(digits[0][:2])["logits"].shape == (2, 10)
    assert not [p for p in a.store.root.iterdir() if p.name.startswith((".", "digits-v2"))]
    return err.value


def test_wrong_device_class_refused_before_unpacking(tmp_path, agent_factory, bundles, model_files, fleet_keys,
                                                     digits) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    arm = build_bundle(tmp_path / "arm.bundle", {"model.onnx": model_files["onnx_v2"]},
                       _fields(device_class="arm64-cortex-a"), load_private_key(fleet_keys["build"]))
    err = _install_refused(a, tmp_path / "arm.bundle", "wrong-device-class", digits)
    assert "arm64-cortex-a" in str(err) and "x86-64-generic" in str(err)
    events = [json.loads(m.payload)["payload"] for m in a.outbox.pending(0, 1000) if m.kind == "event"]
    assert events[-1]["kind"] == "bundle-refused" and events[-1]["details"]["code"] == "wrong-device-class"
    assert arm.name == "digits"
    keyring = Keyring.from_public_keys([load_public_key(fleet_keys["build_pub"])])
    with pytest.raises(BundleError) as berr:
        verify_bundle(tmp_path / "arm.bundle", keyring, device_class="x86-64-generic",
                      unpack_to=tmp_path / "never")
    assert berr.value.reason == "wrong-device-class" and not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


@pytest.mark.parametrize("fmt, entry, source", [
    ("openvino", "model.onnx", "onnx_v2"),      # the case seen: ONNX protobuf labelled openvino
    ("tflite", "model.onnx", "onnx_v2"),
    ("onnx", "model.tflite", "tflite_v1"),
    ("onnx", "model.xml", "openvino_v1"),
])
def test_format_must_match_the_file_magic(tmp_path, agent_factory, bundles, model_files, fleet_keys, digits,
                                          fmt: str, entry: str, source: str) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    fields = _fields(format=fmt)
    fields["entrypoint"] = entry
    build_bundle(tmp_path / "fmt.bundle", {entry: model_files[source]}, fields, load_private_key(fleet_keys["build"]))
    err = _install_refused(a, tmp_path / "fmt.bundle", "format-mismatch", digits)
    assert f"manifest says {fmt}" in str(err)


BAD_SPECS = [
    ({"name": "x", "shape": [-1, 64], "dtype": "float32"}, "dimension 0 is -1"),
    ({"name": "x", "shape": ["batch", 0], "dtype": "float32"}, "dimension 1 is 0"),
    ({"name": "x", "shape": ["batch", 2**40], "dtype": "float32"}, "dimension 1"),
    ({"name": "x", "shape": [65536, 65536, 65536], "dtype": "float32"}, "elements"),
    ({"name": "x", "shape": ["batch", 64], "dtype": "float128x"}, "dtype 'float128x' is unknown"),
    ({"name": "x", "shape": ["batch", 64], "dtype": "object"}, "unknown"),
    ({"name": "x", "shape": "64", "dtype": "float32"}, "shape must be a list"),
    ({"name": "x", "shape": [["batch"]], "dtype": "float32"}, "dimension 0"),
    ({"name": "", "shape": [1], "dtype": "float32"}, "name must be"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS)
def test_bad_tensor_specs_refused_at_build(tmp_path, model_files, fleet_keys, spec: dict, message: str) -> None:
    fields = _fields()
    fields["inputs"] = [spec]
    with pytest.raises(BundleError) as err:
        build_bundle(tmp_path / "x.bundle", {"model.onnx": model_files["onnx_v2"]}, fields,
                     load_private_key(fleet_keys["build"]))
    assert err.value.reason == "bad-tensor-spec" and message in str(err.value)


@pytest.mark.parametrize("spec, message", [BAD_SPECS[0], BAD_SPECS[2], BAD_SPECS[4]])
def test_signed_bad_specs_refused_at_verify_and_install(tmp_path, agent_factory, bundles, model_files, fleet_keys,
                                                        digits, spec: dict, message: str) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    fields = _fields()
    fields["outputs" if "dtype" in message else "inputs"] = [spec]
    forged = forge_bundle(tmp_path / "spec.bundle", {"model.onnx": model_files["onnx_v2"]}, fields,
                          load_private_key(fleet_keys["build"]))
    err = _install_refused(a, forged, "bad-tensor-spec", digits)
    assert message in str(err) and "Traceback" not in str(err)


def test_good_specs_still_build(tmp_path, model_files, fleet_keys) -> None:
    fields = _fields()
    fields["inputs"] = [{"name": "x", "shape": ["batch", 64], "dtype": "float32"},
                        {"name": "ids", "shape": [1, "seq"], "dtype": "int64", "batch_axis": 0},
                        {"name": "mask", "shape": [], "dtype": "bool"}]
    build_bundle(tmp_path / "ok.bundle", {"model.onnx": model_files["onnx_v2"]}, fields,
                 load_private_key(fleet_keys["build"]))
