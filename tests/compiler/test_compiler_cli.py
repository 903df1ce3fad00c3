"""The command: exit 0 on success, 1 when a gate fails (named), 2 on bad input (no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compiler.cli import compile_command


def _invoke(args: list[str]):
    return CliRunner().invoke(compile_command, [*args, "--quiet"], catch_exceptions=False)


def _base(data_files, keys, tmp_path) -> list[str]:
    return ["--eval", str(data_files["eval"]), "--calib", str(data_files["calib"]), "--signing-key", str(keys[0]),
            "--out", str(tmp_path / "out"), "--latency-iterations", "5"]


def test_cli_imports_stay_light() -> None:
    code = ("import sys, compiler.cli; heavy = [m for m in ('torch', 'onnx', 'openvino', 'nncf', 'onnxruntime', "
            "'litert_torch', 'ai_edge_quantizer') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("extra, message", [
    (["--onnx", "missing.onnx"], "--onnx missing.onnx: no such file"),
    (["--torch", "no_such_module_q:make"], "cannot import module 'no_such_module_q'"),
    (["--torch", "missing.pt2"], "PyTorch model file missing.pt2 does not exist"),
    (["--onnx", "{bad_onnx}"], "is not a valid ONNX model"),
    (["--onnx", "{onnx}", "--device-class", "nope"], "unknown device class 'nope'"),
    (["--onnx", "{onnx}", "--device-class", "arm64-cortex-a"], "TFLite needs the PyTorch model"),
    (["--onnx", "{onnx}", "--format", "openvino", "--precision", "dynamic-int8"],
     "precision 'dynamic-int8' is not available for format 'openvino'"),
    (["--onnx", "{onnx}", "--torch", "x:y"], "exactly one model source"),
    (["--onnx", "{onnx}", "--eval", "{nan_eval}"], "NaN or infinite values"),
    (["--onnx", "{onnx}", "--eval", "{bad_labels}"], "labels range over [0, 12]"),
    (["--onnx", "{onnx}", "--eval", "{wrong_shape}"], "expects ('batch', 64)"),
    (["--torch", "{pt2}", "--example-input", "1,32"], "expects ('batch', 32)"),
    (["--torch", "{pt2}", "--example-input", "1,a"], "must be a shape like 1,64"),
])
def test_bad_input_exits_2_with_a_clear_message(extra, message, data_files, keys, tmp_path, mlp_onnx, mlp_pt2,
                                                digits) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    x, y = digits["x_test"][:50].copy(), digits["y_test"][:50].copy()
    x[3, 5] = np.nan
    np.savez(tmp_path / "nan.npz", inputs=x, labels=y)
    y2 = y.copy()
    y2[7] = 12
    np.savez(tmp_path / "labels.npz", inputs=digits["x_test"][:50], labels=y2)
    np.savez(tmp_path / "shape.npz", inputs=digits["x_test"][:50, :60], labels=y)
    subs = {"{onnx}": str(mlp_onnx), "{pt2}": str(mlp_pt2), "{bad_onnx}": str(tmp_path / "bad.onnx"), "{nan_eval}": str(tmp_path / "nan.npz"),
            "{bad_labels}": str(tmp_path / "labels.npz"), "{wrong_shape}": str(tmp_path / "shape.npz")}
    extra = [subs.get(a, a) for a in extra]
    result = _invoke(_base(data_files, keys, tmp_path) + extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_onnx_source_with_config_toml_and_report(data_files, keys, tmp_path, mlp_onnx) -> None:
    cfg = tmp_path / "compile.toml"
    cfg.write_text(f'onnx = "{mlp_onnx}"\nname = "from-toml"\nversion = 7\ndevice-class = ["x86-64-generic"]\n'
                   f'max-accuracy-drop = 0.5\n')
    report = tmp_path / "report.json"
    result = _invoke(["--config", str(cfg), "--version", "8", "--report-json", str(report),
                      *_base(data_files, keys, tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["passed"] and doc["builds"][0]["precision"] == "int8"
    assert doc["builds"][0]["bundle_path"].endswith("from-toml-v8-x86-64-generic.bundle")  # flag beat the TOML
    assert doc["builds"][0]["metrics"]["budgets"]["max_accuracy_drop"] == 0.5
    assert "edgefleet compile" in result.output and "PASS" in result.output


@pytest.mark.slow
def test_gate_failure_exits_1_and_names_the_gate(data_files, keys, tmp_path, mlp_onnx) -> None:
    report = tmp_path / "r.json"
    result = _invoke(["--onnx", str(mlp_onnx), "--max-size-mb", "0.0001", "--report-json", str(report),
                      *_base(data_files, keys, tmp_path)])
    assert result.exit_code == 1, result.output
    assert "quality gate failed: max-size-mb" in result.output
    assert json.loads(report.read_text())["failed_gates"] == ["max-size-mb"]
    assert not (tmp_path / "out" / "model-v1-x86-64-generic.bundle").exists()


@pytest.mark.slow
def test_module_entry_point_and_cross_process_reproducibility(data_files, keys, tmp_path, mlp_pt2) -> None:
    """`python -m compiler` from a .pt2 program, in a fresh process, equals the in-process build."""
    args = ["--torch", str(mlp_pt2), "--device-class", "x86-avx512-vnni", "--device-class", "x86-64-generic",
            "--device-class", "mcu-class-int8"]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    sub = subprocess.run([sys.executable, "-m", "compiler", *args, *_base(data_files, keys, tmp_path / "p"),
                          "--quiet"], capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert sub.returncode == 0, sub.stderr[-2000:]
    local = _invoke([*args, *_base(data_files, keys, tmp_path / "l")])
    assert local.exit_code == 0, local.output
    for dc in ("x86-avx512-vnni", "x86-64-generic", "mcu-class-int8"):
        name = f"model-v1-{dc}.bundle"
        assert (tmp_path / "p" / "out" / name).read_bytes() == (tmp_path / "l" / "out" / name).read_bytes()


def test_mounts_under_a_root_group() -> None:
    import click

    @click.group()
    def root() -> None:
        pass

    root.add_command(compile_command)
    result = CliRunner().invoke(root, ["compile", "--help"])
    assert result.exit_code == 0
    for flag in ("--onnx", "--torch", "--device-class", "--precision", "--distill", "--max-accuracy-drop",
                 "--max-slice-gap-increase", "--max-size-mb", "--max-latency-ms", "--cache-dir", "--report-json",
                 "--config", "--signing-key", "--task"):
        assert flag in result.output
