"""PyTorch to ONNX: the dynamo exporter (onnxscript) with a symbolic batch axis; legacy as fallback.

Files are written from `SerializeToString(deterministic=True)` with weights inline, so the same
model and example input give the same bytes (the exporter's own save adds a side .data file).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from compiler.errors import CompileInputError
from compiler.loading import eval_mode
from compiler.passes import PassConfig

log = logging.getLogger(__name__)
BATCH = "batch"
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class ExportConfig(PassConfig):
    """The export pass: its fields are the lineage record's config and the pass's key."""

    PASS: ClassVar[str] = "export"
    exporter: str = "auto"  # auto (dynamo, legacy on failure) | dynamo | legacy
    opset: int = 20


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    fallback_reason: str = ""


def save_onnx(model: Any, path: Path) -> Path:
    """Write an ONNX ModelProto byte-reproducibly (no external data, deterministic map order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def _example_args(model: Any, example: dict[str, np.ndarray]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())


def _export_dynamo(model: Any, args: tuple[Any, ...], names: list[str], opset: int) -> Any:
    import torch

    batch = torch.export.Dim(BATCH, min=1)
    dynamic = tuple({0: batch} for _ in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, None, dynamo=True, input_names=names, output_names=None,
                                    dynamic_shapes=dynamic, opset_version=opset, verbose=False,
                                    optimize=True, external_data=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _export_legacy(model: Any, args: tuple[Any, ...], names: list[str], opset: int, path: Path) -> Any:
    import onnx
    import torch

    tmp = path.with_suffix(".legacy.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(tmp), dynamo=False, input_names=names, output_names=["output"],
                          dynamic_axes={**{n: {0: BATCH} for n in names}, "output": {0: BATCH}},
                          opset_version=min(opset, 18), do_constant_folding=True)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    return proto


def export_torch(model: Any, example: dict[str, np.ndarray], path: Path, cfg: ExportConfig = ExportConfig()) -> ExportResult:
    """Export `model` called with the example inputs (positional, in order) to `path`."""
    import torch

    model = eval_mode(model)
    names = list(example)
    # Two samples keep the exporter from specialising the batch axis to 1.
    ex = {k: (np.concatenate([v, v]) if v.shape[0] < 2 else v[:2]) for k, v in example.items()}
    args = _example_args(model, ex)
    reason = ""
    if cfg.exporter not in ("auto", "dynamo", "legacy"):
        raise CompileInputError(f"unknown exporter {cfg.exporter!r}; use auto, dynamo or legacy")
    with torch.no_grad():
        if cfg.exporter in ("auto", "dynamo"):
            try:
                proto = _export_dynamo(model, args, names, cfg.opset)
                return ExportResult(save_onnx(proto, path), "dynamo")
            except Exception as exc:
                if cfg.exporter == "dynamo":
                    raise CompileInputError(f"torch.onnx.export(dynamo=True) failed: {exc}") from exc
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                log.warning("dynamo export failed (%s); falling back to the legacy exporter", reason)
        try:
            proto = _export_legacy(model, args, names, cfg.opset, Path(path))
        except Exception as exc:
            raise CompileInputError(f"ONNX export failed with both exporters: {reason or exc}") from exc
        return ExportResult(save_onnx(proto, path), "legacy", reason)


def onnx_tensor_specs(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest input/output specs read from the graph: names, dims ("batch" on each tensor's batch
    axis, see agent.runtime_specs.label_dims), dtypes."""
    import onnx
    from onnx import helper

    from agent.runtime_specs import label_dims

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def spec(vi: Any) -> dict[str, Any]:
        tt = vi.type.tensor_type
        # Exporters may write an expression ("floor(height/2 - 1/2) + 1"): not a name a manifest takes.
        dims = label_dims([int(d.dim_value) if d.HasField("dim_value")
                           else (d.dim_param if _SYMBOL.match(d.dim_param or "") else None) for d in tt.shape.dim])
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        return {"name": vi.name, "shape": dims, "dtype": dtype}

    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [spec(v) for v in model.graph.output]
    return inputs, outputs
