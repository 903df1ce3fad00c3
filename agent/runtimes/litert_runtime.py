"""LiteRT (TFLite) backend via ai-edge-litert's interpreter.

Full-integer models take int8/uint8 inputs: float inputs are quantized with the tensor's scale
and zero point, and quantized outputs are dequantized back to float, so callers always speak
the manifest's float spec. The interpreter is not thread-safe, so calls are serialised; inputs
with a new batch size resize the tensors.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, missing_backend


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


class LiteRtRuntime:
    name = "litert"

    def __init__(self, model_path: Path, options: RuntimeOptions, manifest: dict[str, Any] | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise missing_backend("tflite", "ai-edge-litert", exc) from exc
        try:
            self.interp = Interpreter(model_path=str(model_path), num_threads=max(1, options.threads))
            self.interp.allocate_tensors()
        except Exception as exc:
            raise RuntimeLoadError(f"LiteRT cannot load {Path(model_path).name}: {exc}") from exc
        self._lock = threading.Lock()
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        spec_in = [s["name"] for s in (manifest or {}).get("inputs", [])]
        # TFLite tensor names rarely match the ONNX names; map by position as in the manifest.
        self.input_names = spec_in if len(spec_in) == len(self._in) else [d["name"] for d in self._in]
        self._fixed_batch = any(s.get("batch_axis") == 0 for s in (manifest or {}).get("inputs", []))

    def _set_input(self, detail: dict[str, Any], x: np.ndarray) -> None:
        if tuple(detail["shape"]) != x.shape:
            self.interp.resize_tensor_input(detail["index"], list(x.shape))
            self.interp.allocate_tensors()
            self._in = self.interp.get_input_details()
            self._out = self.interp.get_output_details()
            detail = next(d for d in self._in if d["index"] == detail["index"])
        want = np.dtype(detail["dtype"])
        scale, zp = detail.get("quantization", (0.0, 0))
        if want.kind in "iu" and x.dtype.kind == "f" and scale:
            x = quantize(x, scale, zp, want)
        elif x.dtype != want:
            x = x.astype(want)
        self.interp.set_tensor(detail["index"], np.ascontiguousarray(x))

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(inputs.values()))) if inputs else 0
        fixed_one = all(len(d["shape"]) and int(d["shape"][0]) == 1 for d in self._in)
        if n > 1 and fixed_one and self._fixed_batch:
            # Compiled for batch 1 (quantized TFLite often cannot be resized): one call per row.
            rows = [self._run_once({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
            return [np.concatenate(parts) for parts in zip(*rows, strict=True)]
        return self._run_once(inputs)

    def _run_once(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for name, detail in zip(self.input_names, list(self._in), strict=True):
                self._set_input(detail, inputs[name])
            self.interp.invoke()
            outs = []
            for d in self._out:
                y = self.interp.get_tensor(d["index"])
                scale, zp = d.get("quantization", (0.0, 0))
                outs.append(dequantize(y, scale, zp) if y.dtype.kind in "iu" and scale else np.array(y))
            return outs

    def close(self) -> None:
        self.interp = None
