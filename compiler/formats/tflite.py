"""TFLite (LiteRT): converted from the PyTorch model with litert-torch, quantized with
ai-edge-quantizer (full-integer INT8, mixed, FP32); or a --tflite source bundled as is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import CompileInputError
from compiler.formats.base import Format, Specs
from compiler.passes import Artifact, PassContext


@dataclass(frozen=True)
class TFLiteFormat(Format):
    def build(self, precision: str, ctx: PassContext, work: Path) -> Artifact:
        from compiler.convert_tflite import ONNX_ONLY_MESSAGE, TFLiteConfig, convert_tflite

        if ctx.tflite_src is not None:
            from compiler.tflite_source import build_from_tflite

            return build_from_tflite(precision, ctx, work)
        if ctx.torch_model is None:
            raise CompileInputError(ONNX_ONLY_MESSAGE)
        dst = work / self.entrypoint
        cfg = TFLiteConfig(precision=precision, calibration_samples=ctx.calibration_used() if precision == "int8" else 0)
        convert_tflite(ctx.torch_model, ctx.example, dst, cfg, ctx.calib)
        ran = {"quantizer": "ai_edge_quantizer" if cfg.recipe else None, "recipe": cfg.recipe}
        return self.artifact(precision, {self.entrypoint: dst}, [cfg.record(f"torch:{ctx.torch_sha256}", dst, ran)])

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        from agent.runtime_specs import tflite_io_specs

        return tflite_io_specs(path, source)


TFLITE = TFLiteFormat("tflite", precisions=("int8", "mixed", "fp32"), auto=("int8", "mixed", "fp32"),
                      entrypoint="model.tflite", from_torch=True, takes_tflite_source=True, named_after_source=True)
