"""Tensor specs read from an ONNX file through onnxruntime (no `onnx` package on devices)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORT_TO_NUMPY = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _dims(shape: list[Any]) -> list[int | str]:
    return [d if isinstance(d, int) else (d or "batch") for d in shape]


def onnx_io_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    def spec(a: Any) -> dict[str, Any]:
        return {"name": a.name, "dtype": ORT_TO_NUMPY.get(a.type, a.type), "shape": _dims(list(a.shape))}
    return [spec(a) for a in sess.get_inputs()], [spec(a) for a in sess.get_outputs()]
