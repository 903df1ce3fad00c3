"""Per-layer quantization sensitivity on the calibration set, for the accuracy-aware fallback.

The QDQ model keeps each activation twice: the float tensor T and T' = DequantizeLinear(QuantizeLinear(T)).
Running it once with both exposed measures what quantizing T alone costs, without accumulated
downstream error: the mean over channels of |T'_c - T_c| / |T_c| (per channel, because the failure
on transformers is one outlier channel setting the scale so the other channels collapse to a few
levels). A layer's sensitivity is the worst of its quantized inputs; the fallback returns the most
sensitive layers to float first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.data import Dataset


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op: str
    error: float  # mean per-channel relative error of its quantized activation input(s)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "error": round(self.error, 6)}


def _channel_error(t: np.ndarray, dq: np.ndarray) -> float:
    t = t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t.reshape(-1, 1)
    dq = dq.reshape(t.shape)
    num = np.sqrt(((dq - t) ** 2).sum(axis=0))
    den = np.sqrt((t**2).sum(axis=0))
    keep = den > 1e-12
    return float((num[keep] / den[keep]).mean()) if keep.any() else 0.0


def rank_layers(qdq_path: Path, calib: Dataset, samples: int = 16,
                skip: frozenset[str] = frozenset()) -> list[LayerSensitivity]:
    """Quantized layers of a QDQ model, most sensitive first; `skip`: layers already in float.

    A quantized tensor's error counts against the layer that produced it and the layers that read
    it: excluding either from quantization removes that Q/DQ pair."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(qdq_path))
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pairs: dict[str, str] = {}  # dequantized tensor -> its float source
    for dq in (n for n in nodes if n.op_type == "DequantizeLinear"):
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            pairs[dq.output[0]] = q.input[0]
    existing = {o.name for o in model.graph.output}
    for name in {t for pair in pairs.items() for t in pair} - existing:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Q/DQ pair
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    errors: dict[str, list[float]] = {dq: [] for dq in pairs}
    for batch in calib.take(samples).batches(1):
        out = dict(zip(names, sess.run(names, batch), strict=True))
        for dq, src in pairs.items():
            errors[dq].append(_channel_error(np.asarray(out[src], np.float64), np.asarray(out[dq], np.float64)))
    scores: dict[str, LayerSensitivity] = {}
    for dq, errs in errors.items():
        err = float(np.mean(errs)) if errs else 0.0
        src = producer.get(pairs[dq])
        for c in [*consumers.get(dq, []), *([src] if src is not None else [])]:
            if c.op_type in ("QuantizeLinear", "DequantizeLinear") or not c.name or c.name in skip:
                continue
            if c.name not in scores or scores[c.name].error < err:
                scores[c.name] = LayerSensitivity(c.name, c.op_type, err)
    return sorted(scores.values(), key=lambda s: (-s.error, s.node))


def fallback_steps(n_layers: int, max_fraction: float = 0.5) -> list[int]:
    """How many of the ranked layers each round returns to float: doubling from 1/16 of them up to
    `max_fraction` of them; past that the model is no longer an INT8 model (auto tries FP16 next)."""
    cap = int(n_layers * max_fraction)
    steps, k = [], max(1, n_layers // 16)
    while k < cap:
        steps.append(k)
        k *= 2
    if cap >= 1:
        steps.append(cap)
    return steps
