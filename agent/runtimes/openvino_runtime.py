"""OpenVINO backend: a compiled model on CPU with the properties of the manifest's runtime_config
(agent.runtimes.config: LATENCY hint and f32 inference precision unless the bundle says otherwise,
also for FP16 IRs, whose gate ran in f32).

openvino is imported here only, when a bundle of format "openvino" is loaded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, missing_backend, output_names
from agent.runtimes.config import openvino_config


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, model_path: Path, options: RuntimeOptions, manifest: dict[str, Any] | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise missing_backend("openvino", "openvino", exc) from exc
        self.config = openvino_config(manifest, options)
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            self.compiled = core.compile_model(model, "CPU", self.config)
        except Exception as exc:
            raise RuntimeLoadError(f"OpenVINO cannot load {Path(model_path).name}: {exc}") from exc
        graph_outputs = [o.get_any_name() for o in self.compiled.outputs]
        names = output_names(manifest)
        self.output_names = names if names and set(names) <= set(graph_outputs) else graph_outputs
        self._ports = [self.compiled.output(n) for n in self.output_names]
        # An infer request is not thread-safe: one per thread.
        self._local = threading.local()

    def _request(self) -> Any:
        req = getattr(self._local, "req", None)
        if req is None:
            req = self._local.req = self.compiled.create_infer_request()
        return req

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        req = self._request()
        res = req.infer(inputs)
        return [np.array(res[p]) for p in self._ports]

    def close(self) -> None:
        self.compiled = None
