"""The runtime interface and the factory that picks a backend from the bundle's format.

Backends are imported only when a bundle needs them, so an ONNX-only device never loads
OpenVINO or LiteRT (and does not need them installed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class RuntimeUnavailable(Exception):
    """The backend for this format is not installed; the message names the extra to install."""


class RuntimeLoadError(Exception):
    """The model file could not be loaded by its backend."""


@dataclass(frozen=True)
class RuntimeOptions:
    threads: int = 1
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Idle worker threads spinning for work burn the cores that the apps calling us need.
    allow_spinning: bool = False


class Runtime(Protocol):
    """Run one batch: a dict of input arrays in, a list of output arrays out (manifest order)."""

    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


EXTRAS = {"openvino": "openvino", "tflite": "tflite"}


def load_runtime(fmt: str, model_path: Path, options: RuntimeOptions,
                 manifest: dict[str, Any] | None = None) -> Runtime:
    """The backend for a bundle format ("onnx", "openvino", "tflite")."""
    if fmt == "onnx":
        from agent.runtimes.onnx_runtime import OnnxRuntime

        return OnnxRuntime(model_path, options, manifest)
    if fmt == "openvino":
        from agent.runtimes.openvino_runtime import OpenVinoRuntime

        return OpenVinoRuntime(model_path, options, manifest)
    if fmt == "tflite":
        from agent.runtimes.litert_runtime import LiteRtRuntime

        return LiteRtRuntime(model_path, options, manifest)
    raise RuntimeLoadError(f"unknown model format {fmt!r}")


def missing_backend(fmt: str, module: str, exc: Exception) -> RuntimeUnavailable:
    return RuntimeUnavailable(
        f"the {fmt} runtime needs the '{module}' package, which is not installed ({exc}); "
        f"install it with: pip install edgefleet[{EXTRAS[fmt]}]")


def output_names(manifest: dict[str, Any] | None) -> list[str] | None:
    if not manifest or not manifest.get("outputs"):
        return None
    return [o["name"] for o in manifest["outputs"]]
