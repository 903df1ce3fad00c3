"""The manifest's `monitoring` section (compiler -> agent): which output and whether softmax is needed."""

from __future__ import annotations

import numpy as np

from agent.confidence import MonitorSpec, Slicer, probabilities, top2
from compiler.manifest import monitoring_for


def test_compiler_records_logits_or_probabilities() -> None:
    logits = np.random.default_rng(0).normal(0, 3, size=(50, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert monitoring_for("classification", logits, 4)["softmax"] is True
    mon = monitoring_for("classification", probs, 4)
    assert mon["softmax"] is False and mon["n_classes"] == 4 and mon["output"] == 0
    assert monitoring_for("regression", logits[:, :1], None) == {"version": 1, "task": "regression", "output": 0}
    assert monitoring_for("embedding", logits, None) is None
    # the agent reads it back and gets the same confidence either way
    a, b = MonitorSpec.from_manifest({"monitoring": monitoring_for("classification", logits, 4)}), \
        MonitorSpec.from_manifest({"monitoring": mon})
    pa, pb = probabilities(logits, a.softmax), probabilities(probs, b.softmax)
    assert np.allclose(top2(pa)[1], top2(pb)[1])


def test_feature_and_metadata_slices() -> None:
    spec = MonitorSpec.from_manifest({"monitoring": {"task": "classification", "n_classes": 3, "slices": {
        "metadata": ["region"], "features": [{"key": "age", "input": "x", "index": 1, "edges": [30, 60]}],
        "max_slices": 8, "min_count": 5}}})
    s = Slicer(spec)
    x = {"x": np.array([[0.0, 45.0]], dtype=np.float32)}
    assert s.key({"region": "eu"}, x) == "region=eu,age=1"
    assert s.key(None, {"x": np.array([[0.0, 70.0]])}) == "region=?,age=2"
    assert spec.min_slice_count == 5 and spec.max_slices == 8
