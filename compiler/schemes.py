"""Quantization schemes per (format, architecture): a table, read by the passes, recorded in the lineage.

Why per architecture: on a trained sentence encoder (all-MiniLM-L6-v2) NNCF's default preset gave
mean cosine 0.67 to FP32 and ORT's default QDQ was no better, while NNCF's TRANSFORMER model type
(which keeps LayerNorm/Softmax/GELU and the residual Adds in float and applies SmoothQuant to the
MatMuls) gave 0.998 at 3x the speed of ORT FP32. The ONNX scheme for transformers does the same
by hand: only MatMul/Gemm are quantized (weights per channel) and the float-sensitive nodes the
architecture detector found are excluded.

Detectors (nudenet's YOLOv8n): the box-decode head stays in float and the backbone is quantized.
On 48 face images (FP32 as ground truth) NNCF's MIXED preset (symmetric weights, asymmetric
activations: SiLU outputs are one-sided) with the head ignored gave mAP50 0.997 where NNCF's
default preset on the whole graph lost boxes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from compiler.architecture import QUANTIZED_OPS, Architecture


@dataclass(frozen=True)
class OnnxScheme:
    name: str
    per_channel: bool = True
    op_types: tuple[str, ...] | None = None  # None: every operator ORT can quantize
    exclude_float_nodes: bool = False  # keep the architecture's float-sensitive nodes in float
    extra_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = None if self.op_types is None else list(self.op_types)
        return d


@dataclass(frozen=True)
class OpenVINOScheme:
    name: str
    model_type: str | None = None  # None or "transformer" (nncf.ModelType)
    smooth_quant_matmul: float | None = None  # SmoothQuant alpha for MatMuls; None: NNCF's default
    preset: str | None = None  # None or "mixed" (nncf.QuantizationPreset)
    ignore_float_nodes: bool = False  # keep the architecture's float nodes (a detector's head) in float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def nncf_kwargs(self) -> dict[str, Any]:
        import nncf

        kwargs: dict[str, Any] = {}
        if self.model_type == "transformer":
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        if self.preset == "mixed":
            kwargs["preset"] = nncf.QuantizationPreset.MIXED
        if self.smooth_quant_matmul is not None:
            kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=self.smooth_quant_matmul))
        return kwargs


ONNX_SCHEMES: dict[str, OnnxScheme] = {
    "default": OnnxScheme("qdq-per-channel"),
    "transformer": OnnxScheme("qdq-transformer", per_channel=True, op_types=QUANTIZED_OPS, exclude_float_nodes=True,
                              extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                             "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)}),
    "detector": OnnxScheme("qdq-detector", per_channel=True, exclude_float_nodes=True,
                           extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}),
}
OPENVINO_SCHEMES: dict[str, OpenVINOScheme] = {
    "default": OpenVINOScheme("nncf-default"),
    # alpha 0.95 (NNCF's own default for MatMuls) beat 0.5 on MiniLM: worst cosine 0.996 vs 0.981.
    "transformer": OpenVINOScheme("nncf-transformer", model_type="transformer", smooth_quant_matmul=0.95),
    "detector": OpenVINOScheme("nncf-detector", preset="mixed", ignore_float_nodes=True),
}


# Schemes the accuracy fallback tries, in order, before returning layers to float. On a tiny
# digits encoder NNCF's TRANSFORMER type served cosine 0.58 at batch 64 (0.996 at batch 1) in
# OpenVINO 2026.4 while its default preset gave 0.998: the gates decide, per model.
ALTERNATIVES: dict[tuple[str, str], tuple[str, ...]] = {("openvino", "transformer"): ("default",)}


def _key(arch: Architecture, table: dict[str, Any], override: str | None) -> str:
    return override if override in table else (arch.kind if arch.kind in table else "default")


def onnx_scheme(arch: Architecture, override: str | None = None) -> OnnxScheme:
    return ONNX_SCHEMES[_key(arch, ONNX_SCHEMES, override)]


def openvino_scheme(arch: Architecture, override: str | None = None) -> OpenVINOScheme:
    return OPENVINO_SCHEMES[_key(arch, OPENVINO_SCHEMES, override)]


def alternatives(fmt: str, arch: Architecture) -> tuple[str, ...]:
    return ALTERNATIVES.get((fmt, arch.kind), ())
