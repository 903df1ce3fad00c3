"""The manifest fields of one bundle: tensor specs read back from the artifact, drift baseline.

Specs come from the compiled file itself (not from the source model), because that is what the
agent's runtime will load: TFLite names, fixed batch and int8 quantization differ from ONNX.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.sketches import build_drift_baseline
from compiler.data import Dataset
from compiler.passes import Artifact
from compiler.runtimes import OPENVINO_CONFIG


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


def _artifact_specs(art: Artifact) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if art.fmt == "onnx":
        from compiler.export import onnx_tensor_specs

        return onnx_tensor_specs(art.entry_path)
    if art.fmt == "openvino":
        from compiler.convert_openvino import openvino_tensor_specs

        return openvino_tensor_specs(art.entry_path)
    from compiler.convert_tflite import tflite_tensor_specs

    return tflite_tensor_specs(art.entry_path)


def manifest_for(art: Artifact, *, name: str, version: int, device_class: str, precision: str,
                 metrics: dict[str, Any], provenance: dict[str, Any], evaluation: Dataset, predictions: np.ndarray,
                 task: str, n_classes: int | None) -> dict[str, Any]:
    """Everything build_bundle needs except the file list (it hashes the files itself)."""
    inputs, outputs = _artifact_specs(art)
    fields: dict[str, Any] = {
        "model": {"name": name, "version": int(version), "device_class": device_class, "format": art.fmt,
                  "precision": precision},
        "entrypoint": art.entrypoint, "inputs": inputs, "outputs": outputs, "metrics": metrics,
        "provenance": provenance,
        "drift_baseline": _drift_baseline(inputs, evaluation, predictions, task, n_classes),
    }
    if art.fmt == "openvino":
        fields["runtime_config"] = {"openvino": dict(OPENVINO_CONFIG)}
    return fields
