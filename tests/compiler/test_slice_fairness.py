"""Issue 14 item 7: fairness at build. The slice gate bounds the absolute worst-slice gap and the
worst slice's own accuracy (not only the gap's growth over the reference), and a failed slice
gate is mitigated with slice-balanced calibration, the passing candidate kept and the lineage
saying what was done.

The data: scikit-learn's digits from two sites; site-b's sensor has 8x the gain. The FP32 model
serves both. The calibration file lists site-a's rows first, so plain static INT8 learns site-a's
ranges only and clips site-b (accuracy falls to ~0.8); slice-balanced calibration passes."""

from __future__ import annotations

import json
import tarfile
from typing import Any

import numpy as np
import pytest
from compiler_zoo import MLP, seeded, train

from compiler.evaluate import quality
from compiler.gates import Budgets, check_gates
from compiler.slice_mitigation import balanced_order

GAIN = 8.0


@pytest.fixture(scope="module")
def two_sites() -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(y))
    x, y = x[idx], y[idx]
    s = np.where(np.arange(len(y)) % 2 == 0, "site-a", "site-b")
    x = np.where((s == "site-b")[:, None], x * GAIN, x).astype(np.float32)
    n = 1200
    model = train(seeded(MLP), x[:n], y[:n], epochs=20)
    order = np.argsort(s[:n] != "site-a", kind="stable")  # site-a's rows first, as exported
    return {"model": model, "calib": {"inputs": x[:n][order], "labels": y[:n][order], "slices": s[:n][order]},
            "eval": {"inputs": x[n:], "labels": y[n:], "slices": s[n:]}}


def _manifest(path: Any) -> dict[str, Any]:
    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile("manifest.json").read())


def test_absolute_slice_gap_and_worst_slice_accuracy_are_gated() -> None:
    """The reference is as unfair as the candidate: the increase gate passes, the absolute ones do not."""
    labels = np.array([0, 1, 2, 3] * 5)
    slices = np.array(["a"] * 10 + ["b"] * 10)
    ref = np.eye(4)[labels] * 5
    ref[[0, 1, 2, 3]] = np.eye(4)[(labels[[0, 1, 2, 3]] + 1) % 4] * 5  # slice a: 4 of 10 wrong, also in FP32
    q = quality("classification", ref.copy(), ref, labels, slices)
    assert q.slices == {"a": 0.6, "b": 1.0} and q.slice_gap == pytest.approx(0.4) and q.slice_gap_increase == 0
    loose = Budgets(max_accuracy_drop=0.01, max_slice_gap_increase=0.01, max_size_mb=1, max_latency_ms=5)
    assert {g.gate for g in check_gates(q, 1000, 1.0, loose)} == {
        "max-accuracy-drop", "max-slice-gap-increase", "max-size-mb", "max-latency-ms"}  # unset: not gated
    strict = Budgets(0.01, 0.01, 1, 5, max_slice_gap=0.2, min_slice_accuracy=0.8)
    failed = {g.gate: g for g in check_gates(q, 1000, 1.0, strict) if not g.passed}
    assert set(failed) == {"max-slice-gap", "min-slice-accuracy"}
    assert "worst slice 'a' accuracy 0.6000" in failed["min-slice-accuracy"].detail
    # No slices in the data: nothing to gate.
    plain = quality("classification", ref.copy(), ref, labels, None)
    assert not {g.gate for g in check_gates(plain, 1000, 1.0, strict)} & {"max-slice-gap", "min-slice-accuracy"}


def test_device_class_sets_the_absolute_slice_budgets() -> None:
    from dataclasses import replace

    from agent.device_classes import get_device_class

    dc = get_device_class("x86-64-generic")
    b = Budgets.for_device(replace(dc, extra={**dc.extra, "max_slice_gap": 0.1, "min_slice_accuracy": 0.85}))
    assert (b.max_slice_gap, b.min_slice_accuracy) == (0.1, 0.85)
    assert Budgets.for_device(dc, max_slice_gap=0.2).max_slice_gap == 0.2
    assert Budgets.for_device(dc).max_slice_gap is None


def test_balanced_order_interleaves_every_slice() -> None:
    slices = np.array(["a"] * 90 + ["b"] * 10 + ["c"] * 20)
    order = balanced_order(slices)
    assert sorted(order.tolist()) == list(range(120))
    head = slices[order[:30]]
    assert {s: int((head == s).sum()) for s in "abc"} == {"a": 10, "b": 10, "c": 10}


@pytest.mark.slow
def test_slice_balanced_calibration_mitigates_a_failed_slice_gate(build, two_sites, tmp_path) -> None:
    kw = {"torch": two_sites["model"], "calib": two_sites["calib"], "eval": two_sites["eval"],
          "device_classes": ["x86-64-generic"], "format": "onnx", "precision": "int8",
          "max_slice_gap": 0.05, "min_slice_accuracy": 0.9}
    # Plain calibration (and no layer fallback): site-b is clipped, the slice gates refuse the build.
    [plain] = build(out=tmp_path / "plain", slice_mitigation=False, accuracy_control=False, **kw)
    assert not plain.passed
    assert {"max-slice-gap", "min-slice-accuracy"} <= set(plain.failed_gates)
    # Default: the compiler rebuilds with slice-balanced calibration and keeps the passing candidate.
    [fixed] = build(out=tmp_path / "fixed", **kw)
    assert fixed.passed, fixed.failed_gates
    m = _manifest(fixed.bundle_path)
    assert m["metrics"]["gates"]["max-slice-gap"] and m["metrics"]["gates"]["min-slice-accuracy"]
    assert min(m["metrics"]["slices"].values()) >= 0.9 and m["metrics"]["slice_gap"] <= 0.05
    assert m["model"]["precision"] == "int8"
    lineage = m["provenance"]["lineage"]
    passes = [p["pass"] for p in lineage]
    assert "slice-mitigation" in passes and "accuracy-fallback" not in passes  # all layers stay INT8
    rec = lineage[passes.index("slice-mitigation")]
    assert rec["kept"] is True and rec["config"]["method"] == "slice-balanced-calibration"
    assert rec["config"]["per_slice_rows"] == {"site-a": 64, "site-b": 64}
    assert rec["config"]["before"]["slices"]["site-b"] < 0.9 <= rec["config"]["after"]["slices"]["site-b"]
    assert {"max-slice-gap", "min-slice-accuracy"} <= set(rec["config"]["failed_gates"])
