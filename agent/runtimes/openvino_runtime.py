"""OpenVINO backend: a compiled model on CPU with the properties of the manifest's runtime_config
(agent.runtimes.config: LATENCY hint and f32 inference precision unless the bundle says otherwise,
also for FP16 IRs, whose gate ran in f32), plus static-shape variants of a dynamic-shape model
(runtime_config.shape_cache).

openvino is imported here only, when a bundle of format "openvino" is loaded.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, missing_backend, output_names
from agent.runtimes.config import openvino_config, shape_cache

log = logging.getLogger(__name__)

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]
VARIANT_BYTES = 256 * 2**20  # the static variants' weights, all together


class StaticShapes:
    """Compiled static-shape variants of a dynamic-shape model, least recently used first out.

    Why: OpenVINO's CPU plugin runs a model compiled for one shape faster than the dynamic one
    (nudenet's YOLOv8n INT8: 6-11% at batch 1), with bitwise-equal outputs. A variant is compiled
    on a shape's first call (about 0.5 s for YOLOv8n); after 4x capacity compiles (the shapes churn)
    no more are made and the dynamic model serves the rest. Each variant holds its own copy of the
    weights, so the variants' weights are capped at VARIANT_BYTES (a 200 MB model gets one variant).
    """

    def __init__(self, core: Any, model: Any, config: dict[str, Any], capacity: int) -> None:
        self.core, self.model, self.config, self.capacity = core, model, config, capacity
        self.variants: OrderedDict[ShapeKey, Any] = OrderedDict()
        self.failed: set[ShapeKey] = set()
        self.compiles = 0
        self._lock = threading.Lock()

    def get(self, inputs: dict[str, np.ndarray]) -> Any | None:
        """The variant for these inputs' shapes, compiled now if need be; None: use the dynamic model."""
        key = tuple(sorted((name, tuple(np.shape(a))) for name, a in inputs.items()))
        with self._lock:
            if key in self.variants:
                self.variants.move_to_end(key)
                return self.variants[key]
            if self.compiles >= 4 * self.capacity or key in self.failed:
                return None
            self.compiles += 1
            model = self.model.clone()
            try:
                model.reshape(dict(key))
                compiled = self.core.compile_model(model, "CPU", self.config)
            except Exception as exc:  # a shape the model cannot take: the dynamic model says why
                log.info("event=static-shape-skipped shape=%s error=%s", key, str(exc)[:200])
                self.failed.add(key)
                return None
            self.variants[key] = compiled
            if len(self.variants) > self.capacity:
                self.variants.popitem(last=False)
            return compiled


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, model_path: Path, options: RuntimeOptions, manifest: dict[str, Any] | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise missing_backend("openvino", "openvino", exc) from exc
        self.config = openvino_config(manifest, options)
        capacity = shape_cache(manifest)
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            self.compiled = core.compile_model(model, "CPU", self.config)
        except Exception as exc:
            raise RuntimeLoadError(f"OpenVINO cannot load {Path(model_path).name}: {exc}") from exc
        dynamic = any(p.get_partial_shape().is_dynamic for p in model.inputs)
        weights = Path(model_path).with_suffix(".bin")
        if weights.is_file():
            capacity = min(capacity, VARIANT_BYTES // max(1, weights.stat().st_size))
        self.static = StaticShapes(core, model, self.config, capacity) if dynamic and capacity else None
        graph_outputs = [o.get_any_name() for o in self.compiled.outputs]
        names = output_names(manifest)
        self.output_names = names if names and set(names) <= set(graph_outputs) else graph_outputs
        # An infer request is not thread-safe: one per thread and compiled model.
        self._local = threading.local()

    def _request(self, compiled: Any) -> Any:
        cache = getattr(self._local, "requests", None)
        if cache is None:
            cache = self._local.requests = {}
        entry = cache.get(id(compiled))
        if entry is None or entry[0] is not compiled:
            if len(cache) > 2 * (self.static.capacity if self.static else 0) + 1:
                cache.clear()  # variants evicted since: drop their requests
            entry = cache[id(compiled)] = (compiled, compiled.create_infer_request())
        return entry[1]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = (self.static.get(inputs) if self.static else None) or self.compiled
        res = self._request(compiled).infer(inputs)
        return [np.array(res[compiled.output(n)]) for n in self.output_names]

    def close(self) -> None:
        self.compiled = None
        self.static = None
