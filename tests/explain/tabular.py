"""A 32-feature tabular ONNX model whose class is decided by one known feature, and its signed bundle
with the build's explain section and importance-weighted drift baseline (compiler/explain.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.bundle import build_bundle
from agent.keys import load_private_key
from agent.sketches import build_drift_baseline
from compiler.explain import baseline_importance, explain_version
from tests.agent import models

N, HOT = 32, 7


def one_feature_model(path: Path, n: int = N, hot: int = HOT, rest: float = 0.01) -> Path:
    """logits = [0, 4 * x[hot] + rest * sum(x)]: feature `hot` decides the class."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((n, 2), dtype=np.float32)
    w[:, 1] = rest
    w[hot, 1] = 4.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "onefeat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def eval_rows(n: int = 600, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N)).astype(np.float32)


def tabular_bundle(out: Path, key: Any, rest: float = 0.01, names: list[str] | None = None, version: int = 1,
                   hot: int = HOT, sliced: bool = False) -> tuple[Path, dict]:
    """Build the bundle the way the compiler does: importance from the model's own runtime
    (onnxruntime) on eval rows, the drift baseline from the same rows, the importance into it."""
    import onnxruntime as ort

    onnx_path = one_feature_model(out.parent / f"{out.stem}-model" / "model.onnx", rest=rest, hot=hot)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = eval_rows()
    labels = (x[:, hot] > 0).astype(np.int64)
    slices = np.where(x[:, 0] > 0, "north", "south") if sliced else None  # label-independent eval slices
    section = explain_version(lambda b: sess.run(None, {"x": b.astype(np.float32)})[0], x, labels, slices,
                              "classification", schema_names=names, input_name="x")
    preds = sess.run(None, {"x": x})[0].argmax(axis=1)
    baseline = build_drift_baseline(x, preds, input_name="x", n_classes=2, max_features=N)
    weights = baseline_importance(section, baseline)
    assert weights is not None
    baseline["importance"] = weights
    fields = models.manifest_fields(version, "onnx", "model.onnx", baseline)
    fields["model"]["name"] = "tab"
    fields["inputs"] = [{"name": "x", "dtype": "float32", "shape": ["batch", N]}]
    fields["outputs"] = [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    fields["explain"] = section
    build_bundle(out, {"model.onnx": onnx_path}, fields, key if not isinstance(key, (str, Path)) else load_private_key(key))
    return out, fields
