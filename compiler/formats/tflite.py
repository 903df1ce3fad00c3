"""TFLite (LiteRT): converted from the PyTorch model with litert-torch, quantized with
ai-edge-quantizer (full-integer INT8, mixed, FP32); or a --tflite source bundled as is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import CompileInputError
from compiler.formats.base import Format, Specs, Step
from compiler.passes import Artifact, PassContext


@dataclass(frozen=True)
class TFLiteFormat(Format):
    def step(self, precision: str, ctx: PassContext) -> Step | None:
        """The convert pass from the PyTorch model (None for a --tflite source: tflite_source builds it)."""
        from compiler.convert_tflite import ONNX_ONLY_MESSAGE, TFLiteConfig

        if ctx.tflite_src is not None:
            return None
        if ctx.torch_model is None:
            raise CompileInputError(ONNX_ONLY_MESSAGE)
        calibrated = precision == "int8"
        cfg = TFLiteConfig(precision=precision, calibration_samples=ctx.calibration_used() if calibrated else 0)
        why = {"quantizer": "ai_edge_quantizer" if cfg.recipe else None, "recipe": cfg.recipe}
        return Step(cfg, why, (f"torch:{ctx.torch_sha256}", *((ctx.calib.sha256(),) if calibrated else ())))

    def run(self, precision: str, step: Step | None, ctx: PassContext, work: Path) -> Artifact:
        from compiler.convert_tflite import convert_tflite

        if step is None:
            from compiler.tflite_source import build_from_tflite

            return build_from_tflite(precision, ctx, work)
        dst = work / self.entrypoint
        convert_tflite(ctx.torch_model, ctx.example, dst, step.config, ctx.calib)  # type: ignore[arg-type]
        return self.artifact(precision, {self.entrypoint: dst}, [step.config.record(step.reads[0], dst, step.why)])

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        from agent.runtime_specs import tflite_io_specs

        return tflite_io_specs(path, source)


TFLITE = TFLiteFormat("tflite", precisions=("int8", "mixed", "fp32"), auto=("int8", "mixed", "fp32"),
                      entrypoint="model.tflite", from_torch=True, takes_tflite_source=True, named_after_source=True)
