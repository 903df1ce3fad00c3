"""The `edgefleet` CLI for keys, bundles and devices, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401  (the ONNX file below is read back through it)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgefleet", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def _tiny_onnx(path: Path) -> None:
    """A real linear classifier written as ONNX protobuf by hand would need `onnx`; use it if present."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_keys_build_verify_and_tamper(tmp_path: Path):
    r = run("keys", "generate", "--out", str(tmp_path / "keys"), "--name", "build")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "keys" / "build.key").stat().st_mode & 0o777 == 0o600
    again = run("keys", "generate", "--out", str(tmp_path / "keys"), "--name", "build")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    model = tmp_path / "model.onnx"
    _tiny_onnx(model)
    out = tmp_path / "digits.efb"
    r = run("bundle", "build", "--model", str(model), "--name", "digits", "--version", "2",
            "--device-class", "x86-64-generic", "--key", str(tmp_path / "keys" / "build.key"), "--out", str(out))
    assert r.returncode == 0, r.stderr

    r = run("bundle", "inspect", str(out), "--json")
    manifest = json.loads(r.stdout)
    assert manifest["inputs"] == [{"dtype": "float32", "name": "input", "shape": ["batch", 64]}]

    pub = str(tmp_path / "keys" / "build.pub")
    r = run("bundle", "verify", str(out), "--trust", pub)
    assert r.returncode == 0 and "OK" in r.stdout

    r = run("bundle", "verify", str(out), "--trust", pub, "--installed-version", "5")
    assert r.returncode == 1 and "downgrade" in r.stderr

    tampered = tmp_path / "tampered.efb"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    r = run("bundle", "verify", str(tampered), "--trust", pub)
    assert r.returncode == 1 and "REFUSED" in r.stderr


def test_bad_input_exits_2_without_traceback(tmp_path: Path):
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    (tmp_path / "x.efb").write_bytes(b"nothing")
    r = run("bundle", "verify", str(tmp_path / "x.efb"), "--trust", str(bad_key))
    assert r.returncode == 2 and "cannot load public key" in r.stderr and "Traceback" not in r.stderr


def test_devices_commands():
    r = run("devices", "list")
    assert r.returncode == 0 and "x86-avx512-vnni" in r.stdout and "nvidia-jetson" in r.stdout
    r = run("devices", "show", "mcu-class-int8")
    assert json.loads(r.stdout)["model"]["format"] == "tflite"
    r = run("devices", "show", "nope")
    assert r.returncode == 2 and "unknown device class" in r.stderr
    r = run("devices", "detect")
    assert (r.returncode == 0 and r.stdout.strip() in {"x86-avx512-vnni", "x86-64-generic"}) or (
        r.returncode == 2 and "no device class fits" in r.stderr)
