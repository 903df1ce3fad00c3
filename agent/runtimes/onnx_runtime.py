"""ONNX Runtime backend: threads from the manifest's runtime_config (else the device class),
execution providers from the device class, graph optimisation on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.runtimes.base import RuntimeLoadError, RuntimeOptions, output_names
from agent.runtimes.config import threads

log = logging.getLogger(__name__)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, model_path: Path, options: RuntimeOptions, manifest: dict[str, Any] | None = None) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads(manifest, options)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not options.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        available = set(ort.get_available_providers())
        wanted = [p for p in options.execution_providers if p in available]
        skipped = [p for p in options.execution_providers if p not in available]
        if skipped:
            log.info("event=providers-skipped providers=%s available=%s", ",".join(skipped), ",".join(available))
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeLoadError(f"onnxruntime cannot load {Path(model_path).name}: {exc}") from exc
        graph_outputs = [o.name for o in self.session.get_outputs()]
        names = output_names(manifest)
        self.output_names = names if names and set(names) <= set(graph_outputs) else graph_outputs
        self.providers = self.session.get_providers()

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, inputs)

    def close(self) -> None:
        self.session = None
