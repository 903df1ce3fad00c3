"""Load the model source and the data for a build, and check the data against the model's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.canonical import file_sha256
from compiler.config import CompileConfig
from compiler.data import Dataset, align_to_specs, cast_to_spec, load_dataset, validate_dataset
from compiler.errors import CompileInputError
from compiler.provenance import torch_model_sha256


def _load_onnx_source(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CompileInputError(f"--onnx {p}: no such file")
    from agent.runtime_specs import FORMAT_NAMES, detect_format

    found = detect_format(p)
    if found in ("tflite", "openvino"):
        use = "use --tflite" if found == "tflite" else "compile from its ONNX or PyTorch source"
        raise CompileInputError(f"--onnx {p}: this is {FORMAT_NAMES[found]}, not ONNX; {use}")
    import onnx

    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise CompileInputError(f"--onnx {p} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from exc
    return p


def _pre_specs(cfg: CompileConfig, ds: Dataset) -> list[dict[str, Any]]:
    """Input specs of a PyTorch model before export: from --example-input, else from the data."""
    specs = []
    for i, (name, arr) in enumerate(ds.inputs.items()):
        shape = list(cfg.example_input) if (cfg.example_input and i == 0) else list(arr.shape)
        dtype = "float32" if arr.dtype.kind == "f" else "int64"
        specs.append({"name": name, "shape": ["batch", *shape[1:]], "dtype": dtype})
    return specs


def torch_forward(model: Any, ds: Dataset) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(*(torch.from_numpy(np.ascontiguousarray(v)) for v in ds.inputs.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().numpy().astype(np.float32)


@dataclass
class Inputs:
    torch_model: Any
    onnx_src: Path | None
    evaluation: Dataset
    calib: Dataset
    n_classes: int | None
    inputs_sha: dict[str, str]


def load_inputs(cfg: CompileConfig, progress: Any) -> Inputs:
    """Load the model source and the data and validate the data against the model's inputs."""
    torch_model = None
    onnx_src: Path | None = None
    n_out: Any = None
    if cfg.onnx:
        from compiler.export import onnx_tensor_specs

        onnx_src = _load_onnx_source(cfg.onnx)
        specs, out_specs = onnx_tensor_specs(onnx_src)
        names: list[str] | None = [s["name"] for s in specs]
        model_sha = file_sha256(onnx_src)
        n_out = out_specs[0]["shape"][-1] if out_specs and out_specs[0]["shape"] else None
    elif cfg.tflite:
        from agent.runtime_specs import tflite_io_specs
        from compiler.tflite_source import check_source

        tflite_src = check_source(cfg.tflite)
        specs, out_specs, _ = tflite_io_specs(tflite_src)
        # A fixed batch of 1 is served row by row: the data may hold any number of samples.
        specs = [{**s, "shape": ["batch", *s["shape"][1:]]} if s.get("batch_axis") == 0 else s for s in specs]
        names = [s["name"] for s in specs]
        model_sha = file_sha256(tflite_src)
        n_out = out_specs[0]["shape"][-1] if out_specs and out_specs[0]["shape"] else None
    else:
        from compiler.loading import load_torch_model

        with progress.step("loading the PyTorch model"):
            torch_model = load_torch_model(cfg.torch)
        names = None
        model_sha = torch_model_sha256(torch_model)
    evaluation = load_dataset(cfg.eval, names)
    calib = load_dataset(cfg.calib, list(evaluation.inputs)) if cfg.calib is not None else evaluation
    if torch_model is not None:
        specs = _pre_specs(cfg, evaluation)
        if _shapes_ok(evaluation, specs):
            evaluation = cast_to_spec(evaluation, specs)
            if cfg.task == "classification":
                n_out = int(torch_forward(torch_model, evaluation.take(2)).shape[-1])
    n_classes = n_out if cfg.task == "classification" and isinstance(n_out, int) else None
    evaluation, calib = align_to_specs(evaluation, specs, "--eval"), align_to_specs(calib, specs, "--calib")
    validate_dataset(evaluation, specs, task=cfg.task, n_classes=n_classes,
                     need_labels=cfg.task == "classification", min_slice_size=cfg.min_slice_size, role="--eval")
    validate_dataset(calib, specs, task=cfg.task, n_classes=n_classes, min_slice_size=1, role="--calib")
    evaluation, calib = cast_to_spec(evaluation, specs), cast_to_spec(calib, specs)
    # File sources are named by base name: the same file elsewhere must give the same manifest.
    spec = cfg.onnx or cfg.tflite or cfg.torch
    if isinstance(spec, (str, Path)):
        source = Path(spec).name if Path(spec).is_file() else str(spec)
    else:
        source = type(spec).__qualname__
    inputs_sha = {"model": model_sha, "model_source": source, "calib": calib.sha256(), "eval": evaluation.sha256()}
    if cfg.distill:
        inputs_sha["student"] = cfg.distill
    return Inputs(torch_model, onnx_src, evaluation, calib, n_classes, inputs_sha)


def _shapes_ok(ds: Dataset, specs: list[dict[str, Any]]) -> bool:
    try:
        validate_dataset(ds, specs, task="embedding", min_slice_size=1)
        return True
    except CompileInputError:
        return False
