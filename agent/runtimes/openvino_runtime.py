"""OpenVINO backend: a compiled model on CPU with the LATENCY performance hint, f32 inference
precision unless the bundle is fp16.

openvino is imported here only, when a bundle of format "openvino" is loaded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, missing_backend, output_names


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, model_path: Path, options: RuntimeOptions, manifest: dict[str, Any] | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise missing_backend("openvino", "openvino", exc) from exc
        try:
            core = ov.Core()
            model = core.read_model(str(model_path))
            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": max(1, options.threads)}
            precision = ((manifest or {}).get("model") or {}).get("precision", "fp32")
            if precision != "fp16":
                # CPUs with AMX/AVX512-BF16 otherwise run fp32 graphs in bf16 (about 1e-2 error).
                config["INFERENCE_PRECISION_HINT"] = "f32"
            self.compiled = core.compile_model(model, "CPU", config)
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
