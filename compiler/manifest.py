"""The manifest fields of one bundle: tensor specs read back from the artifact, drift baseline.

Specs come from the compiled file itself, because that is what the agent's runtime will load;
TFLite tensors keep the source model's names and dtypes through runtime_config.tflite (the agent
binds them), so one request works on every device class. `runtime_manifest` is also what the
gate runs the candidate with (compiler.runtimes), so the bundle carries the config that was gated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agent.sketches import build_drift_baseline
from compiler.data import Dataset
from compiler.formats import get_format
from compiler.passes import Artifact
from compiler.slice_keys import monitoring_slices


def _drift_baseline(art_inputs: list[dict[str, Any]], ds: Dataset, predictions: np.ndarray, task: str,
                    n_classes: int | None) -> dict[str, Any]:
    x = next(iter(ds.inputs.values()))
    per_sample_rank = x.ndim - 1
    reduce_axes: tuple[int, ...] = ()
    if per_sample_rank == 3:
        reduce_axes = (1, 2)  # CHW image: per-channel means
    elif per_sample_rank == 2:
        reduce_axes = (0,)  # (seq, d): per-dimension means over positions
    if task == "classification":
        return build_drift_baseline(x, predictions.argmax(axis=-1), input_name=art_inputs[0]["name"],
                                    reduce_axes=reduce_axes, prediction_kind="class", n_classes=n_classes)
    values = (np.linalg.norm(predictions.reshape(len(predictions), -1), axis=1) if task == "embedding"
              else predictions.reshape(len(predictions), -1)[:, 0])
    return build_drift_baseline(x, values, input_name=art_inputs[0]["name"], reduce_axes=reduce_axes,
                                prediction_kind="value")


def monitoring_for(task: str, predictions: np.ndarray, n_classes: int | None,
                   slices: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest's `monitoring` (issue 14): which output the agent reads confidence from and
    whether it holds logits (softmax needed) or probabilities, judged on the eval predictions;
    slice keys the device keeps outcomes by. None for embeddings (no confidence, no labels)."""
    if task not in ("classification", "regression"):
        return None
    mon: dict[str, Any] = {"version": 1, "task": task, "output": 0}
    if task == "classification":
        p = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
        is_prob = bool(p.size) and p.min() >= 0.0 and bool(np.allclose(p.sum(axis=1), 1.0, atol=1e-3))
        mon.update(softmax=not is_prob, n_classes=int(n_classes or p.shape[1]), low_confidence=0.5)
    if slices:
        mon["slices"] = slices
    return mon


def runtime_manifest(art: Artifact, source_onnx: Path | None, threads: int) -> dict[str, Any]:
    """Format, tensor specs and runtime_config of the artifact; TFLite named as the source ONNX."""
    plugin = get_format(art.fmt)
    source = None
    if plugin.named_after_source and source_onnx is not None and source_onnx.suffix == ".onnx":
        from compiler.export import onnx_tensor_specs

        source = onnx_tensor_specs(source_onnx)
    return plugin.runtime_fields(art.entry_path, threads, source)


def manifest_for(art: Artifact, *, name: str, version: int, device_class: str, precision: str,
                 metrics: dict[str, Any], provenance: dict[str, Any], evaluation: Dataset, predictions: np.ndarray,
                 task: str, n_classes: int | None, threads: int = 1,
                 source_onnx: Path | None = None, slice_keys: list[str] | None = None) -> dict[str, Any]:
    """Everything build_bundle needs except the file list (it hashes the files itself)."""
    rt = runtime_manifest(art, source_onnx, threads)
    inputs, outputs = rt["inputs"], rt["outputs"]
    fields: dict[str, Any] = {
        "model": {"name": name, "version": int(version), "device_class": device_class, "format": art.fmt,
                  "precision": precision},
        "entrypoint": art.entrypoint, "inputs": inputs, "outputs": outputs, "metrics": metrics,
        "provenance": provenance,
        "drift_baseline": _drift_baseline(inputs, evaluation, predictions, task, n_classes),
    }
    fields["runtime_config"] = rt["runtime_config"]
    monitoring = monitoring_for(task, predictions, n_classes, monitoring_slices(slice_keys, evaluation.inputs))
    if monitoring is not None:
        fields["monitoring"] = monitoring
    return fields
