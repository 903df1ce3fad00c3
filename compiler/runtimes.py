"""Run a compiled artifact the way a device will, and time it.

There is no build-time copy of the runtimes: a Runner is the agent's own runtime adapter
(agent.runtimes: onnxruntime, OpenVINO, LiteRT) behind the agent's own input check
(agent.spec_check), loaded with the manifest fields the bundle will carry (tensor specs and
runtime_config: OpenVINO precision hint, threads, TFLite tensor binding and quantized I/O).
So the outputs a gate judges are the outputs the agent serves.

Runners take inputs by name (or, when the names differ, by position) and return the first
output as float32, so metrics compare formats on equal terms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import RuntimeOptions, load_runtime
from agent.spec_check import check_inputs, specs_from_manifest
from compiler.formats import REFERENCE, get_format


def runtime_fields(fmt: str, path: Path, threads: int = 1,
                   source: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The manifest fields a runtime reads (format, tensor specs, runtime_config), by the format's
    plugin. `source` (the source model's input and output specs) names TFLite tensors as the source did."""
    return get_format(fmt).runtime_fields(Path(path), threads, source)


class Runner:
    """An agent runtime plus the agent's input check, configured by `manifest` (see runtime_fields)."""

    def __init__(self, fmt: str, path: Path, manifest: dict[str, Any] | None = None, threads: int = 1,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        self.manifest = manifest or runtime_fields(fmt, path, threads)
        self.specs = specs_from_manifest(self.manifest)
        self.input_names = [s.name for s in self.specs]
        self.runtime = load_runtime(fmt, Path(path), RuntimeOptions(threads=threads, execution_providers=providers),
                                    self.manifest)

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(inputs) == set(self.input_names) or len(inputs) != len(self.input_names):
            return inputs
        return dict(zip(self.input_names, inputs.values(), strict=True))

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.runtime.run(check_inputs(self._feed(inputs), self.specs))[0], dtype=np.float32)


class OnnxRunner(Runner):
    """FP32 ONNX Runtime (the reference and the side-by-side latency peer)."""

    def __init__(self, path: Path, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        super().__init__(REFERENCE.name, path, None, threads, providers)


def open_runner(fmt: str, path: Path, threads: int = 1, manifest: dict[str, Any] | None = None) -> Runner:
    """A Runner for `path`; pass the bundle's manifest fields to run exactly as the device will."""
    return Runner(fmt, path, manifest, threads)


def predict(runner: Runner, inputs: Any, batch: int = 64) -> np.ndarray:
    """Outputs for arrays with samples on axis 0, or for a compiler.data.Dataset (its own batch axes)."""
    if hasattr(inputs, "batches"):
        return np.concatenate([runner.run(feed) for feed in inputs.batches(batch)])
    n = next(iter(inputs.values())).shape[0]
    return np.concatenate([runner.run({k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, n, batch)])


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    iterations: int


def measure_latency(runner: Runner, sample: Any, iterations: int = 50, warmup: int = 5) -> Latency:
    """Single-sample latency on this machine (batch 1), after a warm-up; `sample` as for predict."""
    one = sample.batches(1)[0] if hasattr(sample, "batches") else {k: v[:1] for k, v in sample.items()}
    for _ in range(warmup):
        runner.run(one)
    times = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        runner.run(one)
        times[i] = time.perf_counter() - t0
    return Latency(round(float(np.percentile(times, 50)) * 1e3, 4), round(float(np.percentile(times, 99)) * 1e3, 4),
                   iterations)


def timing_runner(fmt: str, path: Path, manifest: dict[str, Any]) -> Runner:
    """The same runtime config on one thread: build-host latency stays comparable on a shared machine."""
    rc = dict(manifest.get("runtime_config") or {})
    if rc.get("threads", 1) == 1:
        return Runner(fmt, path, manifest, 1)
    return Runner(fmt, path, {**manifest, "runtime_config": {**rc, "threads": 1}}, 1)
