"""Build one candidate artifact (format x precision) from the FP32 ONNX or the PyTorch model.

Each call is one pass of the lineage: its config, the hash of what went in and of what came
out. The pipeline decides which candidates to try and which one to keep.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.canonical import file_sha256
from compiler.architecture import Architecture
from compiler.data import Dataset
from compiler.errors import CompileInputError

MANIFEST_PRECISION = {"int8": "int8", "dynamic-int8": "int8", "fp16": "fp16", "fp32": "fp32", "mixed": "mixed"}
FORMAT_PRECISIONS = {
    "onnx": ("int8", "dynamic-int8", "fp16", "fp32"),
    "openvino": ("int8", "fp16", "fp32"),
    "tflite": ("int8", "mixed", "fp32"),
}


@dataclass
class Artifact:
    fmt: str
    precision: str
    files: dict[str, Path]
    entrypoint: str
    lineage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def entry_path(self) -> Path:
        return self.files[self.entrypoint]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


# `--precision auto`: most aggressive first; the fastest candidate that passes every gate is kept.
# Transformers try dynamic INT8 first on ONNX (no activation ranges to calibrate).
AUTO_CHAINS: dict[tuple[str, bool], tuple[str, ...]] = {
    ("onnx", True): ("dynamic-int8", "int8", "fp16", "fp32"),
    ("onnx", False): ("int8", "fp16", "fp32"),
    ("openvino", True): ("int8", "fp16", "fp32"),
    ("openvino", False): ("int8", "fp16", "fp32"),
    ("tflite", True): ("int8", "mixed", "fp32"),
    ("tflite", False): ("int8", "mixed", "fp32"),
}


def auto_chain(fmt: str, transformer: bool) -> list[str]:
    return list(AUTO_CHAINS[(fmt, transformer)])


def check_precision(fmt: str, precision: str) -> None:
    if precision not in FORMAT_PRECISIONS[fmt]:
        raise CompileInputError(f"precision {precision!r} is not available for format {fmt!r}; use one of "
                                f"{', '.join(FORMAT_PRECISIONS[fmt])} or auto")


def _record(name: str, config: dict[str, Any], src: Path | str, out: Path, **extra: Any) -> dict[str, Any]:
    src_hash = file_sha256(src) if isinstance(src, Path) else src
    return {"pass": name, "config": config, "input_sha256": src_hash, "output_sha256": file_sha256(out), **extra}


@dataclass
class PassContext:
    onnx_fp32: Path
    torch_model: Any  # None for ONNX-only sources
    torch_sha256: str | None
    example: dict[str, np.ndarray]
    calib: Dataset
    evaluation: Dataset
    transformer: bool
    calibrate_method: str = "minmax"
    calibration_samples: int = 128
    accuracy_control_drop: float | None = None
    arch: Architecture | None = None  # detected from the FP32 graph; picks the quantization scheme
    float_nodes: tuple[str, ...] = ()  # layers the accuracy fallback returned to float
    scheme: str | None = None  # a quantization scheme the accuracy fallback chose over the architecture's
    tflite_src: Path | None = None  # --tflite: the source model (compiler.tflite_source builds from it)

    @property
    def architecture(self) -> Architecture:
        if self.arch is not None:
            return self.arch
        return Architecture("transformer" if self.transformer else "other")


def build_artifact(fmt: str, precision: str, ctx: PassContext, work: Path) -> Artifact:
    work.mkdir(parents=True, exist_ok=True)
    check_precision(fmt, precision)
    if fmt not in BUILDERS:
        raise CompileInputError(f"unknown format {fmt!r}")
    return BUILDERS[fmt](precision, ctx, work)


def _build_onnx(precision: str, ctx: PassContext, work: Path) -> Artifact:
    from compiler.quantize_onnx import OnnxQuantConfig, run_onnx_pass

    dst = work / "model.onnx"
    if precision == "fp32":
        shutil.copyfile(ctx.onnx_fp32, dst)
        return Artifact("onnx", precision, {"model.onnx": dst}, "model.onnx")
    from compiler.schemes import onnx_scheme

    mode = ONNX_MODES[precision]
    arch = ctx.architecture
    scheme = onnx_scheme(arch, ctx.scheme)
    exclude = tuple(dict.fromkeys((arch.float_nodes if scheme.exclude_float_nodes else ()) + ctx.float_nodes))
    cfg = OnnxQuantConfig(mode=mode, calibrate_method=ctx.calibrate_method,
                          calibration_samples=ctx.calibration_samples, per_channel=scheme.per_channel,
                          op_types=scheme.op_types, nodes_to_exclude=exclude, extra_options=scheme.extra_options)
    run_onnx_pass(ctx.onnx_fp32, dst, ctx.calib, cfg)
    conf: dict[str, Any] = {"tool": "onnxruntime.quantization", "mode": mode}
    if mode == "static":
        conf.update(calibrate_method=cfg.calibrate_method, per_channel=cfg.per_channel, format="QDQ",
                    activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                    calibration_samples=min(cfg.calibration_samples, ctx.calib.n),
                    architecture=arch.to_dict(), scheme=scheme.to_dict(),
                    float_nodes=len(exclude), fallback_float_nodes=list(ctx.float_nodes),
                    **_kept_in_float(arch, scheme.exclude_float_nodes))
    elif mode == "dynamic":
        conf.update(per_channel=cfg.per_channel, weight_type=cfg.weight_type)
    else:
        conf.update(keep_io_types=True)
    return Artifact("onnx", precision, {"model.onnx": dst}, "model.onnx",
                    [_record("quantize", conf, ctx.onnx_fp32, dst)])


ONNX_MODES = {"int8": "static", "dynamic-int8": "dynamic", "fp16": "fp16"}


def _kept_in_float(arch: Architecture, applied: bool) -> dict[str, Any]:
    """Lineage: which subgraph the architecture's scheme kept in float, by node name."""
    if not applied or not arch.float_nodes:
        return {}
    why = {"detector": "detection head (box decode: DFL, anchor grid, strides, class sigmoid)",
           "transformer": "LayerNorm/Softmax/GELU and residual Adds"}.get(arch.kind, arch.kind)
    return {"kept_float": {"why": why, "nodes": list(arch.float_nodes)}}


def _build_openvino(precision: str, ctx: PassContext, work: Path) -> Artifact:
    from compiler.convert_openvino import OpenVINOConfig, convert_openvino
    from compiler.schemes import openvino_scheme

    xml = work / "model.xml"
    arch = ctx.architecture
    scheme = openvino_scheme(arch, ctx.scheme)
    cfg = OpenVINOConfig(precision=precision, calibration_samples=ctx.calibration_samples,
                         transformer=scheme.model_type == "transformer", scheme=scheme,
                         ignored_nodes=tuple(dict.fromkeys((arch.float_nodes if scheme.ignore_float_nodes else ())
                                                           + ctx.float_nodes)),
                         max_drop=ctx.accuracy_control_drop if precision == "int8" else None)
    info = convert_openvino(ctx.onnx_fp32, xml, cfg, ctx.calib, ctx.evaluation)
    conf = {"tool": "openvino.convert_model", "precision": precision, **info}
    if precision == "int8":
        conf.update(calibration_samples=min(cfg.calibration_samples, ctx.calib.n), transformer=cfg.transformer,
                    max_drop=cfg.max_drop, architecture=arch.to_dict(), scheme=scheme.to_dict(),
                    fallback_float_nodes=list(ctx.float_nodes), **_kept_in_float(arch, scheme.ignore_float_nodes))
    files = {"model.xml": xml, "model.bin": xml.with_suffix(".bin")}
    rec = _record("convert", conf, ctx.onnx_fp32, xml, output_bin_sha256=file_sha256(files["model.bin"]))
    return Artifact("openvino", precision, files, "model.xml", [rec])


def _build_tflite(precision: str, ctx: PassContext, work: Path) -> Artifact:
    from compiler.convert_tflite import ONNX_ONLY_MESSAGE, TFLiteConfig, convert_tflite

    if ctx.tflite_src is not None:
        from compiler.tflite_source import build_from_tflite

        return build_from_tflite(precision, ctx, work)
    if ctx.torch_model is None:
        raise CompileInputError(ONNX_ONLY_MESSAGE)
    dst = work / "model.tflite"
    if precision == "dynamic-int8":
        precision = "mixed"
    cfg = TFLiteConfig(precision=precision, calibration_samples=ctx.calibration_samples)
    convert_tflite(ctx.torch_model, ctx.example, dst, cfg, ctx.calib)
    recipe = {"int8": "static_wi8_ai8", "mixed": "dynamic_wi8_afp32", "fp32": None}[precision]
    conf = {"tool": "litert_torch.convert", "quantizer": "ai_edge_quantizer" if recipe else None,
            "recipe": recipe, "batch": 1}
    if recipe == "static_wi8_ai8":
        conf["calibration_samples"] = min(cfg.calibration_samples, ctx.calib.n)
    return Artifact("tflite", precision, {"model.tflite": dst}, "model.tflite",
                    [_record("convert", conf, f"torch:{ctx.torch_sha256}", dst)])


BUILDERS = {"onnx": _build_onnx, "openvino": _build_openvino, "tflite": _build_tflite}
