"""Gates fail the build with the right name; `--precision auto` keeps the fastest passing candidate."""

from __future__ import annotations

import numpy as np
import pytest
from compiler_zoo import calib_set, eval_set
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.device_classes import cpu_flags
from compiler.errors import GateFailure
from compiler.evaluate import quality
from compiler.gates import Budgets, check_gates
from compiler.pipeline import require_passed

pytestmark = pytest.mark.slow


def _broken_calibration(digits: dict) -> dict:
    """Calibration data a thousand times too small: every activation range is wrong, INT8 saturates."""
    c = calib_set(digits)
    return {"inputs": c["inputs"] * 1e-3}


def test_forced_broken_quantization_fails_the_accuracy_gate(build, mlp, digits) -> None:
    [res] = build(torch=mlp, calib=_broken_calibration(digits), eval=eval_set(digits),
                  device_classes=["x86-64-generic"])
    assert not res.passed and res.bundle_path is None
    assert "max-accuracy-drop" in res.failed_gates
    gate = next(g for g in res.gates if g["gate"] == "max-accuracy-drop")
    assert gate["value"] > 0.1 and "accuracy" in gate["detail"] and "budget 0.0100" in gate["detail"]
    with pytest.raises(GateFailure) as err:
        require_passed([res])
    assert "max-accuracy-drop" in err.value.gates and "x86-64-generic" in str(err.value)


def test_auto_precision_falls_back_when_int8_breaks(build, mlp, digits) -> None:
    [res] = build(torch=mlp, calib=_broken_calibration(digits), eval=eval_set(digits),
                  device_classes=["x86-64-generic"], precision="auto")
    assert res.passed and res.precision in ("fp16", "fp32")
    tried = {c["precision"]: c for c in res.candidates}
    assert list(tried) == ["int8", "fp16", "fp32"]
    assert not tried["int8"]["passed"]
    passing = [c for c in res.candidates if c["passed"]]
    best = min(c["latency_p50_ms"] for c in passing)
    first_close = next(c for c in passing if c["latency_p50_ms"] <= best * 1.10)
    assert res.precision == first_close["precision"] and res.latency["p50_ms"] == first_close["latency_p50_ms"]


def test_size_and_latency_budgets(build, mlp, digits) -> None:
    [res] = build(torch=mlp, calib=calib_set(digits), eval=eval_set(digits), device_classes=["x86-64-generic"],
                  max_size_mb=0.001, max_latency_ms=1e-6)
    assert res.failed_gates == ["max-latency-ms", "max-size-mb"]
    assert not res.passed


def test_gate_arithmetic() -> None:
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]] * 5
    out = ref.copy()
    out[[0, 4]] = np.eye(4)[1] * 5  # both errors in slice "a"
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    slices = np.array(["a", "a", "a", "a", "a", "b", "b", "b"])
    q = quality("classification", out, ref, labels, slices)
    assert q.metric == 0.75 and q.drop == 0.25 and q.agreement == 0.75
    assert q.worst_slice == "a" and q.slices == {"a": 0.6, "b": 1.0} and q.slice_gap_increase == 0.4
    budgets = Budgets(max_accuracy_drop=0.3, max_slice_gap_increase=0.5, max_size_mb=1, max_latency_ms=5)
    assert all(g.passed for g in check_gates(q, 1000, 1.0, budgets))
    tight = Budgets(max_accuracy_drop=0.2, max_slice_gap_increase=0.3, max_size_mb=1, max_latency_ms=5)
    assert [g.gate for g in check_gates(q, 1000, 1.0, tight) if not g.passed] == [
        "max-accuracy-drop", "max-slice-gap-increase"]


def test_embedding_and_regression_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 16))
    q = quality("embedding", ref + 0.5 * rng.normal(size=ref.shape), ref, None, None)
    assert 0.5 < q.metric < 0.99 and q.reference_metric == 1.0 and q.drop == pytest.approx(1 - q.metric)
    y = rng.normal(size=(50, 1))
    r = quality("regression", y + 0.1, y + 0.01, y, None)
    assert r.metric_name == "r2" and r.reference_metric > r.metric and r.drop > 0


def test_embedding_gate_catches_a_cosine_of_094() -> None:
    """The failure mode seen with onnxruntime dynamic INT8 on a small transformer."""
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 32))
    noisy = ref + 0.36 * rng.normal(size=ref.shape)
    q = quality("embedding", noisy, ref, None, None)
    assert 0.92 < q.metric < 0.96
    budgets = Budgets(max_accuracy_drop=0.01, max_slice_gap_increase=0.02, max_size_mb=10, max_latency_ms=10)
    failing = {g.gate: g for g in check_gates(q, 1, 1.0, budgets) if not g.passed}
    assert set(failing) == {"max-accuracy-drop", "min-cosine", "min-p1-cosine"}
    assert "cosine" in failing["max-accuracy-drop"].detail


def test_openvino_accuracy_control_uses_the_drop_budget(build, mlp, digits) -> None:
    import json
    import tarfile

    [res] = build(torch=mlp, calib=calib_set(digits), eval=eval_set(digits), device_classes=["x86-avx512-vnni"],
                  max_accuracy_drop=0.01)
    assert res.passed and res.metrics["budgets"]["max_accuracy_drop"] == 0.01
    with tarfile.open(res.bundle_path) as tar:
        m = json.loads(tar.extractfile("manifest.json").read())
    convert = next(p for p in m["provenance"]["lineage"] if p["pass"] == "convert")
    assert convert["config"]["quantizer"] == "nncf.quantize_with_accuracy_control"
    assert convert["config"]["compress_to_fp16"] is False and convert["config"]["max_drop"] == 0.01
    [plain] = build(torch=mlp, calib=calib_set(digits), eval=eval_set(digits), device_classes=["x86-avx512-vnni"],
                    accuracy_control=False, out=res.bundle_path.parent / "plain")
    assert plain.metrics["metric"] > 0.9
    # Without accuracy control the drop is what the host's kernels give: within 0.01 on a VNNI host;
    # without VNNI they saturate (0.0100 here, just over), which accuracy control above had to absorb.
    assert plain.passed or ("avx512_vnni" not in cpu_flags() and plain.failed_gates == ["max-accuracy-drop"])


def test_converter_failure_fails_the_build_not_the_process(build, mlp, digits, monkeypatch) -> None:
    import compiler.convert_tflite as ct

    def lowering_gap(*args, **kwargs):
        raise RuntimeError("Lowering not found: aten.normal_functional")

    monkeypatch.setattr(ct, "convert_tflite", lowering_gap)
    [res] = build(torch=mlp, calib=calib_set(digits), eval=eval_set(digits), device_classes=["arm64-cortex-a"])
    assert not res.passed and res.failed_gates == ["build-error"] and res.bundle_path is None
    assert "aten.normal_functional" in res.candidates[0]["error"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_quality_and_gate_invariants(seed: int, drop_budget: float, gap_budget: float) -> None:
    """For any outputs: drop = reference - metric, gaps are non-negative, a gate passes iff value <= budget."""
    rng = np.random.default_rng(seed)
    n = 40
    ref = rng.normal(size=(n, 5))
    out = ref + rng.normal(scale=rng.uniform(0, 3), size=ref.shape)
    labels = rng.integers(0, 5, n)
    slices = np.array(["a", "b"] * (n // 2))
    q = quality("classification", out, ref, labels, slices)
    assert q.drop == pytest.approx(q.reference_metric - q.metric, abs=2e-6)
    assert q.slice_gap >= 0 and q.reference_slice_gap >= 0 and 0 <= q.agreement <= 1
    assert q.worst_slice in q.slices and q.slices[q.worst_slice] == min(q.slices.values())
    gates = {g.gate: g for g in check_gates(q, 10, 1.0, Budgets(drop_budget, gap_budget, 1.0, 2.0))}
    assert gates["max-accuracy-drop"].passed == (q.drop <= drop_budget + 1e-12)
    assert gates["max-slice-gap-increase"].passed == (q.slice_gap_increase <= gap_budget + 1e-12)
    assert gates["max-size-mb"].passed and gates["max-latency-ms"].passed
