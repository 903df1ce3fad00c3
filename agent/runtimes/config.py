"""The manifest's `runtime_config`: how the gate ran the model, which the agent applies as is.

One place for both sides: the compiler writes this section with `runtime_config()` and evaluates
its candidates through the same agent runtimes reading the same section, so what a device serves
is what was gated (OpenVINO precision hint, threads, TFLite tensor mapping and quantized I/O).

    "runtime_config": {
      "threads": 2,                                   # intra-op threads the gate ran with
      "openvino": {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
      "shape_cache": 4,                               # OpenVINO: static-shape variants of a dynamic model
      "tflite": {"io": "float",                       # quantized tensors take and give float
                 "inputs":  [{"name": "input", "tensor": "serving_default_args_0",
                              "dtype": "int8", "quantization": {"scale": 0.02, "zero_point": -3}}],
                 "outputs": [{"name": "logits", "tensor": "serving_default_output_0", "dtype": "float32"}]}
    }

Bundles without the section (older compilers, `bundle build` of a plain file) get the defaults:
OpenVINO in f32 (CPUs with AVX512-BF16/AMX otherwise run f32 graphs in bf16, about 1e-2 error, which
wrecked a small INT8 transformer: cosine 0.65 vs 0.999), TFLite tensors by position, no shape cache.

`shape_cache` (OpenVINO): a model with dynamic input dimensions (nudenet's YOLOv8n takes any H x W)
runs 6-11% faster compiled for one static shape (no per-call shape inference; the f32 head fused into one
Subgraph) with bitwise-equal outputs, so the agent compiles a static variant for each input shape it
is asked for, up to this many (least recently used first out); the interface stays dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions

OPENVINO_DEFAULTS: dict[str, str] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
# Properties a bundle may set; anything else (device selection, caching paths) is the device's business.
OPENVINO_KEYS = {
    "INFERENCE_PRECISION_HINT": ("f32", "f16", "bf16"),
    "PERFORMANCE_HINT": ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"),
    "EXECUTION_MODE_HINT": ("ACCURACY", "PERFORMANCE"),
}
SHAPE_CACHE = 4  # what the compiler writes for OpenVINO bundles
MAX_SHAPE_CACHE = 64
TFLITE_IO = ("float",)  # quantized tensors: q = round(x / scale) + zero_point in, (q - zero_point) * scale out
MAX_THREADS = 256


@dataclass(frozen=True)
class TensorBinding:
    """A manifest tensor (the source model's name) bound to the runtime's own tensor."""

    name: str
    tensor: str


def _section(manifest: Mapping[str, Any] | None) -> Mapping[str, Any]:
    rc = (manifest or {}).get("runtime_config") or {}
    if not isinstance(rc, Mapping):
        raise RuntimeLoadError("manifest runtime_config must be an object")
    return rc


def threads(manifest: Mapping[str, Any] | None, options: RuntimeOptions) -> int:
    """The manifest's threads (what the gate ran with) if it names them, else the device's."""
    n = _section(manifest).get("threads")
    if n is None:
        return max(1, options.threads)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise RuntimeLoadError(f"runtime_config.threads must be an integer 1..{MAX_THREADS}, got {n!r}")
    return n


def openvino_config(manifest: Mapping[str, Any] | None, options: RuntimeOptions) -> dict[str, Any]:
    """compile_model properties: the defaults, overridden by the manifest's checked values."""
    given = _section(manifest).get("openvino") or {}
    if not isinstance(given, Mapping):
        raise RuntimeLoadError("runtime_config.openvino must be an object")
    config: dict[str, Any] = dict(OPENVINO_DEFAULTS)
    for key, value in given.items():
        allowed = OPENVINO_KEYS.get(key)
        if allowed is None:
            raise RuntimeLoadError(f"runtime_config.openvino: property {str(key)[:40]!r} is not one a bundle may "
                                   f"set ({', '.join(OPENVINO_KEYS)})")
        if value not in allowed:
            raise RuntimeLoadError(f"runtime_config.openvino.{key} must be one of {', '.join(allowed)}")
        config[key] = value
    config["INFERENCE_NUM_THREADS"] = threads(manifest, options)
    return config


def shape_cache(manifest: Mapping[str, Any] | None) -> int:
    """How many static-shape variants an OpenVINO runtime may compile (0: the dynamic model only)."""
    n = _section(manifest).get("shape_cache", 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_SHAPE_CACHE:
        raise RuntimeLoadError(f"runtime_config.shape_cache must be an integer 0..{MAX_SHAPE_CACHE}, got {n!r}")
    return n


def _bindings(items: Any, where: str) -> list[TensorBinding]:
    if not isinstance(items, list):
        raise RuntimeLoadError(f"{where} must be a list")
    out = []
    for i, e in enumerate(items):
        if not (isinstance(e, Mapping) and isinstance(e.get("name"), str) and isinstance(e.get("tensor"), str)):
            raise RuntimeLoadError(f"{where}[{i}] must be an object with string name and tensor")
        out.append(TensorBinding(e["name"], e["tensor"]))
    return out


def tflite_bindings(manifest: Mapping[str, Any] | None) -> tuple[list[TensorBinding], list[TensorBinding]] | None:
    """(inputs, outputs) mapping the manifest's names to TFLite tensors, or None (map by position)."""
    section = _section(manifest).get("tflite")
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise RuntimeLoadError("runtime_config.tflite must be an object")
    if section.get("io", "float") not in TFLITE_IO:
        raise RuntimeLoadError(f"runtime_config.tflite.io must be one of {', '.join(TFLITE_IO)}")
    return (_bindings(section.get("inputs", []), "runtime_config.tflite.inputs"),
            _bindings(section.get("outputs", []), "runtime_config.tflite.outputs"))


def runtime_config(fmt: str, *, threads: int, tflite: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The section the compiler writes (and evaluates with) for a bundle of format `fmt`."""
    rc: dict[str, Any] = {"threads": int(threads)}
    if fmt == "openvino":
        rc["openvino"] = dict(OPENVINO_DEFAULTS)
        rc["shape_cache"] = SHAPE_CACHE
    if fmt == "tflite" and tflite is not None:
        rc["tflite"] = {"io": "float", **tflite}
    return rc
