"""Distillation gives a smaller student that still fits its budget, recorded in the lineage."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from compiler_zoo import eval_set

from compiler.distill import hinton_loss

pytestmark = pytest.mark.slow


def test_hinton_loss_prefers_matching_the_teacher() -> None:
    teacher = torch.tensor([[4.0, 1.0, 0.0]])
    label = torch.tensor([0])
    close = hinton_loss(torch.tensor([[3.9, 1.1, 0.0]]), teacher, label, 4.0, 0.7)
    far = hinton_loss(torch.tensor([[0.0, 1.0, 4.0]]), teacher, label, 4.0, 0.7)
    assert float(close) < float(far)
    assert float(hinton_loss(teacher, teacher, None, 2.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distilled_student_is_smaller_and_within_budget(build, mlp, digits, tmp_path) -> None:
    train = {"inputs": digits["x_train"], "labels": digits["y_train"]}
    kw = {"torch": mlp, "calib": train, "eval": eval_set(digits), "device_classes": ["x86-64-generic"],
          "distill": "compiler_zoo:make_student", "epochs": 40, "temperature": 4.0, "alpha": 0.7, "seed": 1,
          "max_accuracy_drop": 0.03, "max_slice_gap_increase": 0.05}
    [res] = build(**kw)
    assert res.passed, (res.failed_gates, res.distillation)
    d = res.distillation
    assert d["student_params"] * 3 < d["teacher_params"]
    assert d["teacher_accuracy"] - d["student_accuracy"] <= 0.05
    with tarfile.open(res.bundle_path) as tar:
        m = json.loads(tar.extractfile("manifest.json").read())
    lineage = m["provenance"]["lineage"]
    assert [p["pass"] for p in lineage] == ["distill", "export", "quantize", "evaluate"]
    assert lineage[0]["config"]["temperature"] == 4.0 and lineage[0]["config"]["seed"] == 1
    assert lineage[0]["output_sha256"] == lineage[1]["input_sha256"]
    # The gate compares with the teacher: the reference accuracy is the teacher's.
    assert m["metrics"]["reference_metric"] == pytest.approx(d["teacher_accuracy"], abs=1e-6)
    assert np.isclose(m["metrics"]["distillation"]["student_params"], d["student_params"])
    # Same seed: the same student, the same bytes.
    [again] = build(out=tmp_path / "again", **kw)
    assert again.bundle_path.read_bytes() == res.bundle_path.read_bytes()
