"""Is this build host a stand-in for the device class? Only then is an absolute latency budget checked.

A 20 ms budget for an AVX-512 VNNI box means nothing when measured on a laptop without VNNI, and a
Jetson GPU budget means nothing measured on any CPU. Off target the report says "not measured on
target". Where this host has the class's instruction set and every CPU feature it lists, but not
its marker files, the candidate's speedup over FP32 ONNX Runtime measured side by side on this host
(interleaved calls, so both see the same load) stands in and is gated. A host lacking some of the
class's features is no proxy even for relative speed: the INT8 kernels depend on exactly those
features. OpenVINO INT8 of the digits MLP/CNN/encoder ran at 0.24x/0.29x/0.40x FP32 ORT side by
side on an AVX2-only host (no VNNI) and passed the 0.9x gate on AVX-512 VNNI hosts. Another ISA,
missing features or an accelerator: not gated.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.device_classes import DeviceClass, cpu_flags

# Execution providers that are not the CPU: a class that lists one first runs on an accelerator.
ACCELERATOR_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "QNNExecutionProvider",
                         "CoreMLExecutionProvider", "OpenVINOExecutionProvider:GPU", "ROCMExecutionProvider")


@dataclass(frozen=True)
class TargetMatch:
    on_target: bool
    cpu_proxy: bool  # this host's CPU has what the class's kernels use: relative speed here says something
    why_not: str = ""


def match_host(dc: DeviceClass, *, arch: str | None = None, flags: set[str] | None = None,
               exists: Any = None) -> TargetMatch:
    """Compare the class's arch, CPU features, marker files and accelerator with this machine; only a
    missing marker file leaves this host a proxy for relative speed."""
    import os

    arch = arch or platform.machine()
    flags = cpu_flags() if flags is None else flags
    exists = exists or os.path.exists
    accel = next((p for p in dc.execution_providers if p in ACCELERATOR_PROVIDERS), None)
    if accel:
        return TargetMatch(False, False, f"{dc.name} runs on {accel}; this build host measures on its CPU")
    if dc.arch != arch:  # another instruction set: relative speed here says nothing about it either
        return TargetMatch(False, False, f"{dc.name} is {dc.arch}, this build host is {arch}")
    missing = sorted(set(dc.cpu_features) - flags)
    if missing:  # the kernels the class's build relies on run emulated or not at all here
        return TargetMatch(False, False, f"this build host lacks CPU features {', '.join(missing)} of {dc.name}")
    absent = [p for p in dc.detect_paths if not exists(p)]
    if absent:
        return TargetMatch(False, True, f"this build host has no {', '.join(absent)} ({dc.name} marker)")
    return TargetMatch(True, True)


@dataclass(frozen=True)
class SideBySide:
    p50_ms: float
    p99_ms: float
    fp32_p50_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_p50_ms / self.p50_ms if self.p50_ms > 0 else 0.0


def side_by_side(candidate: Any, fp32: Any, sample: Any, iterations: int = 50, warmup: int = 5) -> SideBySide:
    """Batch-1 latency of the candidate and of FP32 ONNX Runtime, alternating call by call; `sample`
    is a compiler.data.Dataset (each input cut on its own batch axis) or arrays with samples on axis 0."""
    one = sample.batches(1)[0] if hasattr(sample, "batches") else {k: v[:1] for k, v in sample.items()}
    for _ in range(warmup):
        candidate.run(one)
        fp32.run(one)
    a, b = np.empty(iterations), np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        candidate.run(one)
        t1 = time.perf_counter()
        fp32.run(one)
        t2 = time.perf_counter()
        a[i], b[i] = t1 - t0, t2 - t1
    return SideBySide(round(float(np.percentile(a, 50)) * 1e3, 4), round(float(np.percentile(a, 99)) * 1e3, 4),
                      round(float(np.percentile(b, 50)) * 1e3, 4))


def fp32_runner(path: Path) -> Any:
    from compiler.runtimes import OnnxRunner, open_runner

    if Path(path).suffix == ".tflite":  # a --tflite source: its own float peer
        return open_runner("tflite", path)
    return OnnxRunner(path, threads=1)
