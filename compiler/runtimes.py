"""Run a compiled artifact in its own runtime (onnxruntime, OpenVINO, LiteRT) and time it.

Every runner takes float inputs by name and returns the first output as float32, so metrics
compare formats on equal terms; full-integer TFLite inputs are quantized here exactly as the
agent must do it (q = round(x / scale) + zero_point, clipped to int8).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Runner(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class OnnxRunner:
    def __init__(self, path: Path, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        avail = set(ort.get_available_providers())
        use = [p for p in providers if p in avail] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), so, providers=use)
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: (v.astype(np.float16) if self.input_types.get(k) == "tensor(float16)" else v)
                for k, v in inputs.items()}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


# OpenVINO's CPU plugin defaults to bf16 inference on CPUs with AVX512-BF16/AMX, which wrecked a
# small INT8 transformer here (cosine 0.65 vs 0.999 with f32). Bundles record this hint for the agent.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class OpenVINORunner:
    def __init__(self, xml: Path, threads: int = 1) -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(str(xml), "CPU", {**OPENVINO_CONFIG, "INFERENCE_NUM_THREADS": threads})
        self.request = self.compiled.create_infer_request()

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        result = self.request.infer(inputs)
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)


@dataclass(frozen=True)
class QuantParams:
    scale: float
    zero_point: int
    dtype: str


class LiteRTRunner:
    """One sample per invoke: the converted graph has a fixed batch of 1."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.output = self.interpreter.get_output_details()[0]

    def _set(self, detail: dict[str, Any], x: np.ndarray) -> None:
        dtype = detail["dtype"]
        scale, zp = detail["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max)
        self.interpreter.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=dtype))

    def _get(self) -> np.ndarray:
        y = self.interpreter.get_tensor(self.output["index"])
        scale, zp = self.output["quantization"]
        if np.issubdtype(y.dtype, np.integer) and scale:
            return ((y.astype(np.float32) - zp) * scale).astype(np.float32)
        return y.astype(np.float32)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        arrays = list(inputs.values())
        outs = []
        for i in range(arrays[0].shape[0]):
            for detail, arr in zip(self.inputs, arrays, strict=True):
                self._set(detail, arr[i:i + 1])
            self.interpreter.invoke()
            outs.append(self._get())
        return np.concatenate(outs)

    def input_quantization(self) -> list[QuantParams | None]:
        out: list[QuantParams | None] = []
        for d in self.inputs:
            scale, zp = d["quantization"]
            out.append(QuantParams(float(scale), int(zp), np.dtype(d["dtype"]).name) if scale else None)
        return out


def open_runner(fmt: str, path: Path, threads: int = 1) -> Runner:
    if fmt == "onnx":
        return OnnxRunner(path, threads)
    if fmt == "openvino":
        return OpenVINORunner(path, threads)
    if fmt == "tflite":
        return LiteRTRunner(path, threads)
    raise ValueError(f"unknown format {fmt!r}")


def predict(runner: Runner, inputs: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    n = next(iter(inputs.values())).shape[0]
    return np.concatenate([runner.run({k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)])


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    iterations: int


def measure_latency(runner: Runner, sample: dict[str, np.ndarray], iterations: int = 50, warmup: int = 5) -> Latency:
    """Single-sample latency on this machine (batch 1), after a warm-up."""
    one = {k: v[:1] for k, v in sample.items()}
    for _ in range(warmup):
        runner.run(one)
    times = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        runner.run(one)
        times[i] = time.perf_counter() - t0
    return Latency(round(float(np.percentile(times, 50)) * 1e3, 4), round(float(np.percentile(times, 99)) * 1e3, 4),
                   iterations)
