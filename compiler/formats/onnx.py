"""ONNX Runtime: static QDQ INT8 (calibrated), dynamic INT8, FP16, or the FP32 reference as is."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.canonical import file_sha256
from compiler.formats.base import Format, Specs, Step
from compiler.passes import Artifact, PassContext, kept_in_float


@dataclass(frozen=True)
class OnnxFormat(Format):
    def step(self, precision: str, ctx: PassContext) -> Step | None:
        """The precision pass, with the architecture's scheme and the layers kept in float."""
        from compiler.quantize_onnx import DynamicInt8, Fp16, StaticInt8
        from compiler.schemes import onnx_scheme

        if precision == "fp32":
            return None
        model = file_sha256(ctx.onnx_fp32)
        if precision == "fp16":
            return Step(Fp16(), {}, (model,))
        arch = ctx.architecture
        scheme = onnx_scheme(arch, ctx.scheme)
        exclude = tuple(dict.fromkeys((arch.float_nodes if scheme.exclude_float_nodes else ()) + ctx.float_nodes))
        if precision == "dynamic-int8":
            return Step(DynamicInt8(per_channel=scheme.per_channel, reduce_range=ctx.reduce_range,
                                    nodes_to_exclude=exclude), {}, (model,))
        cfg = StaticInt8(calibrate_method=ctx.calibrate_method, calibration_samples=ctx.calibration_used(),
                         per_channel=scheme.per_channel, reduce_range=ctx.reduce_range, op_types=scheme.op_types,
                         nodes_to_exclude=exclude, extra_options=scheme.extra_options)
        why = {"architecture": arch.to_dict(), "scheme": scheme.to_dict(), "fallback_float_nodes": list(ctx.float_nodes),
               **kept_in_float(arch, scheme.exclude_float_nodes)}
        return Step(cfg, why, (model, ctx.calib.sha256()))

    def run(self, precision: str, step: Step | None, ctx: PassContext, work: Path) -> Artifact:
        from compiler.quantize_onnx import run_onnx_pass

        dst = work / self.entrypoint
        if step is None:
            shutil.copyfile(ctx.onnx_fp32, dst)
            return self.artifact(precision, {self.entrypoint: dst}, [])
        run_onnx_pass(ctx.onnx_fp32, dst, ctx.calib, step.config)  # type: ignore[arg-type]
        return self.artifact(precision, {self.entrypoint: dst}, [step.config.record(step.reads[0], dst, step.why)])

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        from compiler.export import onnx_tensor_specs

        return (*onnx_tensor_specs(path), None)


# Transformers try dynamic INT8 first (no activation ranges to calibrate).
ONNX = OnnxFormat("onnx", precisions=("int8", "dynamic-int8", "fp16", "fp32"), auto=("int8", "fp16", "fp32"),
                  entrypoint="model.onnx", auto_transformer=("dynamic-int8", "int8", "fp16", "fp32"))
