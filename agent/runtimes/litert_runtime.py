"""LiteRT (TFLite) backend via ai-edge-litert's interpreter.

The manifest speaks the source model's interface; runtime_config.tflite (agent.runtimes.config)
binds each of its names to a TFLite tensor (`input` -> `serving_default_args_0`). Without the
binding (older bundles) tensors are taken by position. Full-integer models take int8/uint8
inputs: float inputs are quantized with the tensor's scale and zero point, and quantized
outputs are dequantized back to float, so callers always speak the manifest's float spec.
Integer inputs keep their source dtype in the manifest (int64 token ids); LiteRT converters make
those tensors int32, so values are range-checked before the cast, never wrapped silently.
The interpreter is not thread-safe, so calls are serialised; inputs with a new batch size
resize the tensors.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, missing_backend
from agent.runtimes.config import tflite_bindings, threads
from agent.spec_check import InputError


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def to_tensor(name: str, x: np.ndarray, want: np.dtype, quantization: tuple[float, int]) -> np.ndarray:
    """A request array as the tensor's dtype: quantize floats, range-check integer narrowing."""
    scale, zp = quantization
    if want.kind in "iu" and x.dtype.kind == "f" and scale:
        return quantize(x, scale, zp, want)
    if x.dtype == want:
        return x
    if want.kind in "iu" and x.dtype.kind in "iub" and x.size:
        info = np.iinfo(want)
        lo, hi = int(x.min()), int(x.max())
        if lo < info.min or hi > info.max:
            raise InputError(f"input {name!r} has values {lo}..{hi}; this TFLite model takes {want.name} "
                             f"({info.min}..{info.max})")
    return x.astype(want)


def from_tensor(y: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    scale, zp = quantization
    return dequantize(y, scale, zp) if y.dtype.kind in "iu" and scale else np.array(y)


class LiteRtRuntime:
    name = "litert"

    def __init__(self, model_path: Path, options: RuntimeOptions, manifest: dict[str, Any] | None = None) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise missing_backend("tflite", "ai-edge-litert", exc) from exc
        bindings = tflite_bindings(manifest)
        try:
            self.interp = Interpreter(model_path=str(model_path), num_threads=threads(manifest, options))
            self.interp.allocate_tensors()
        except Exception as exc:
            raise RuntimeLoadError(f"LiteRT cannot load {Path(model_path).name}: {exc}") from exc
        self._lock = threading.Lock()
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        if bindings is not None:
            self.input_names = [b.name for b in bindings[0]]
            self._in_idx = self._resolve(bindings[0], ins, "input")
            self._out_idx = self._resolve(bindings[1], outs, "output") if bindings[1] else [d["index"] for d in outs]
        else:
            spec_in = [s["name"] for s in (manifest or {}).get("inputs", [])]
            # Older bundles: TFLite tensor names rarely match the ONNX names; map by position.
            self.input_names = spec_in if len(spec_in) == len(ins) else [d["name"] for d in ins]
            self._in_idx = [d["index"] for d in ins]
            self._out_idx = [d["index"] for d in outs]
        self._fixed_batch = any(s.get("batch_axis") == 0 for s in (manifest or {}).get("inputs", []))
        self._in_d = {d["index"]: d for d in ins}
        self._out_q = {d["index"]: d.get("quantization", (0.0, 0)) for d in outs}

    @staticmethod
    def _resolve(bindings: list[Any], details: list[dict[str, Any]], what: str) -> list[int]:
        by_name = {d["name"]: d["index"] for d in details}
        missing = [b.tensor for b in bindings if b.tensor not in by_name]
        if missing or len(bindings) != len(details):
            raise RuntimeLoadError(f"runtime_config.tflite {what}s {[b.tensor for b in bindings]} do not match the "
                                   f"model's {what} tensors {sorted(by_name)}")
        return [by_name[b.tensor] for b in bindings]

    def _set_input(self, name: str, index: int, x: np.ndarray) -> None:
        detail = self._in_d[index]
        if tuple(detail["shape"]) != x.shape:
            self.interp.resize_tensor_input(index, list(x.shape))
            self.interp.allocate_tensors()
            self._in_d = {d["index"]: d for d in self.interp.get_input_details()}
            detail = self._in_d[index]
        x = to_tensor(name, x, np.dtype(detail["dtype"]), detail.get("quantization", (0.0, 0)))
        self.interp.set_tensor(index, np.ascontiguousarray(x))

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(inputs.values()))) if inputs else 0
        fixed_one = all(len(s) and int(s[0]) == 1 for s in (self._in_d[i]["shape"] for i in self._in_idx))
        if n > 1 and fixed_one and self._fixed_batch:
            # Compiled for batch 1 (quantized TFLite often cannot be resized): one call per row.
            rows = [self._run_once({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
            return [np.concatenate(parts) for parts in zip(*rows, strict=True)]
        return self._run_once(inputs)

    def _run_once(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for name, index in zip(self.input_names, self._in_idx, strict=True):
                self._set_input(name, index, inputs[name])
            self.interp.invoke()
            return [from_tensor(self.interp.get_tensor(i), self._out_q[i]) for i in self._out_idx]

    def close(self) -> None:
        self.interp = None
