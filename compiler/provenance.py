"""Hashes and versions recorded in the manifest and used as the cache key."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.canonical import canonical_json

TOOLS = ("edgefleet", "numpy", "torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf",
         "litert-torch", "ai-edge-quantizer", "ai-edge-litert")


def json_sha256(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not-installed"
    return out


def code_version() -> str:
    """Hash of the compiler's own sources: a code change invalidates the cache and shows in provenance."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for p in sorted(root.rglob("*.py")):  # compiler/formats/ and any subpackage too
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return "compiler-" + h.hexdigest()[:16]


def torch_model_sha256(model: Any) -> str:
    """Class name plus every parameter and buffer, by name: the identity of a model in memory."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
