"""Tiny real models for the agent tests: an MLP trained on sklearn digits, exported to ONNX
(built with onnx.helper from the trained weights), OpenVINO IR and TFLite, plus a model that
outputs NaN (for health-check tests). Kept out of conftest so the benchmark can reuse it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def train_mlp(seed: int = 0, hidden: int = 32, epochs: int = 60) -> Any:
    import torch

    x, y = digits_data()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return model.eval()


def mlp_weights(model: Any) -> list[np.ndarray]:
    return [p.detach().numpy().astype(np.float32) for p in model.parameters()]


def onnx_from_weights(weights: list[np.ndarray], path: Path, nan_output: bool = False) -> Path:
    """x[batch,64] -> Gemm -> Relu -> Gemm -> logits[batch,10] (optionally forced to NaN)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = weights
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits" if not nan_output else "l0"], transB=1)]
    if nan_output:
        inits.append(numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan"))
        nodes.append(helper.make_node("Mul", ["l0", "nan"], ["logits"]))
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def openvino_from_onnx(onnx_path: Path, out_xml: Path) -> Path:
    import openvino as ov

    m = ov.convert_model(str(onnx_path))
    ov.save_model(m, str(out_xml), compress_to_fp16=False)
    return out_xml


def tflite_from_torch(model: Any, path: Path) -> Path:
    import litert_torch
    import torch

    sample = (torch.zeros(1, 64),)
    litert_torch.convert(model.eval(), sample).export(str(path))
    return path


INPUTS = [{"name": "x", "shape": ["batch", 64], "dtype": "float32"}]
OUTPUTS = [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]


def manifest_fields(version: int, fmt: str, entrypoint: str, baseline: dict[str, Any],
                    name: str = "digits", inputs: list | None = None, outputs: list | None = None,
                    device_class: str = "x86-64-generic") -> dict[str, Any]:
    return {
        "model": {"name": name, "version": version, "device_class": device_class, "format": fmt,
                  "precision": "fp32"},
        "entrypoint": entrypoint,
        "inputs": inputs or INPUTS,
        "outputs": outputs or OUTPUTS,
        "metrics": {},
        "provenance": {"built_by": "tests/agent"},
        "drift_baseline": baseline,
    }


def baseline_for(weights: list[np.ndarray]) -> dict[str, Any]:
    from agent.sketches import build_drift_baseline

    x, _ = digits_data()
    w1, b1, w2, b2 = weights
    logits = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    return build_drift_baseline(x, logits.argmax(1), input_name="x", max_features=8, n_classes=10)
