"""Slice reweighting in distillation (issue 14 item 7): with slices in the training data each slice
weighs the same in the loss, and a minority slice's accuracy gap shrinks against unweighted
distillation. Data: scikit-learn's digits; the minority slice (~10%) comes from a device with
another sensor layout (its 64 pixels in a fixed other order)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from compiler.data import Dataset
from compiler.distill import DistillConfig, balanced_weights, distill, hinton_loss
from compiler.errors import CompileInputError

pytestmark = pytest.mark.slow


def _data() -> tuple[Dataset, Dataset]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    minority = rng.random(len(x)) < 0.1
    x[minority] = x[minority][:, rng.permutation(64)]
    s = np.where(minority, "sensor-b", "sensor-a")
    idx = rng.permutation(len(x))
    tr, te = idx[:1200], idx[1200:]
    return Dataset({"x": x[tr]}, y[tr], s[tr]), Dataset({"x": x[te]}, y[te], s[te])


def _teacher(train: Dataset) -> nn.Module:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    x, y = torch.from_numpy(train.inputs["x"]), torch.from_numpy(train.labels)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(x), y).backward()
        opt.step()
    return teacher


@pytest.fixture
def small_student(monkeypatch):
    mod = types.ModuleType("slice_students")
    mod.make = lambda: nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    monkeypatch.setitem(sys.modules, "slice_students", mod)
    return "slice_students:make"


def test_balanced_weights_give_every_slice_the_same_total() -> None:
    s = np.array(["a"] * 90 + ["b"] * 10)
    w, per = balanced_weights(s)
    assert w[s == "a"].sum() == pytest.approx(50.0) and w[s == "b"].sum() == pytest.approx(50.0)
    assert per == {"a": pytest.approx(100 / 180), "b": 5.0}
    logits, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    # equal weights: the weighted loss is the plain one
    assert float(hinton_loss(logits, teacher, labels, 4.0, 0.7, torch.ones(4))) == \
        pytest.approx(float(hinton_loss(logits, teacher, labels, 4.0, 0.7)), rel=1e-5)


def test_reweighting_shrinks_the_minority_slice_gap(small_student) -> None:
    train, evaluation = _data()
    teacher = _teacher(train)
    runs = {w: distill(teacher, train, DistillConfig(small_student, epochs=20, slice_weighting=w), evaluation,
                       progress=False) for w in ("none", "balanced")}
    gap = {w: r.student_slice_accuracy["sensor-a"] - r.student_slice_accuracy["sensor-b"] for w, r in runs.items()}
    assert runs["none"].slice_weights is None
    assert runs["balanced"].slice_weights["sensor-b"] > 4 * runs["balanced"].slice_weights["sensor-a"]
    assert gap["none"] > 0.3, gap                     # unweighted: the student neglects the minority
    assert gap["balanced"] < gap["none"] - 0.2, gap   # reweighted: the gap shrinks a lot
    assert runs["balanced"].student_accuracy >= runs["none"].student_accuracy - 0.03
    recorded = runs["balanced"].to_dict()
    assert recorded["slice_weights"] == runs["balanced"].slice_weights
    assert set(recorded["student_slice_accuracy"]) == {"sensor-a", "sensor-b"}


def test_unknown_weighting_is_bad_input(small_student) -> None:
    train, evaluation = _data()
    with pytest.raises(CompileInputError, match="slice_weighting must be one of balanced, none"):
        distill(nn.Linear(64, 10), train, DistillConfig(small_student, slice_weighting="inverse"), evaluation,
                progress=False)


def test_a_distilled_build_records_the_weighting_in_its_lineage(build, mlp, digits) -> None:
    """Through compile_model: training data with slices -> the distil pass's lineage and the
    manifest's metrics say which weights each slice had and what the student scored per slice."""
    import json
    import tarfile

    from compiler_zoo import eval_set

    s = np.where(np.arange(len(digits["y_train"])) % 10 == 0, "rare", "common")
    train = {"inputs": digits["x_train"], "labels": digits["y_train"], "slices": s}
    [res] = build(torch=mlp, calib=train, eval=eval_set(digits), device_classes=["x86-64-generic"],
                  distill="compiler_zoo:make_student", epochs=5, seed=1, max_accuracy_drop=1.0,
                  max_slice_gap_increase=1.0)
    assert res.passed, res.failed_gates
    with tarfile.open(res.bundle_path) as tar:
        m = json.loads(tar.extractfile("manifest.json").read())
    distil = m["provenance"]["lineage"][0]
    assert distil["pass"] == "distill" and distil["config"]["slice_weighting"] == "balanced"
    assert distil["metrics"]["slice_weights"] == {"common": pytest.approx(1200 / 2160, abs=1e-5),
                                                  "rare": pytest.approx(5.0)}
    assert set(m["metrics"]["distillation"]["student_slice_accuracy"]) == {"region-a", "region-b"}
