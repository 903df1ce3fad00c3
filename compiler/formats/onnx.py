"""ONNX Runtime: static QDQ INT8 (calibrated), dynamic INT8, FP16, or the FP32 reference as is."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.formats.base import Format, Specs
from compiler.passes import Artifact, PassContext, kept_in_float


@dataclass(frozen=True)
class OnnxFormat(Format):
    def pass_config(self, precision: str, ctx: PassContext) -> tuple[Any, dict[str, Any]]:
        """(the precision pass's config, why it is what it is: architecture, scheme, fallback layers)."""
        from compiler.quantize_onnx import DynamicInt8, Fp16, StaticInt8
        from compiler.schemes import onnx_scheme

        if precision == "fp16":
            return Fp16(), {}
        arch = ctx.architecture
        scheme = onnx_scheme(arch, ctx.scheme)
        exclude = tuple(dict.fromkeys((arch.float_nodes if scheme.exclude_float_nodes else ()) + ctx.float_nodes))
        if precision == "dynamic-int8":
            return DynamicInt8(per_channel=scheme.per_channel, nodes_to_exclude=exclude), {}
        cfg = StaticInt8(calibrate_method=ctx.calibrate_method, calibration_samples=ctx.calibration_used(),
                         per_channel=scheme.per_channel, op_types=scheme.op_types, nodes_to_exclude=exclude,
                         extra_options=scheme.extra_options)
        return cfg, {"architecture": arch.to_dict(), "scheme": scheme.to_dict(),
                     "fallback_float_nodes": list(ctx.float_nodes),
                     **kept_in_float(arch, scheme.exclude_float_nodes)}

    def build(self, precision: str, ctx: PassContext, work: Path) -> Artifact:
        from compiler.quantize_onnx import run_onnx_pass

        dst = work / self.entrypoint
        if precision == "fp32":
            shutil.copyfile(ctx.onnx_fp32, dst)
            return self.artifact(precision, {self.entrypoint: dst}, [])
        cfg, why = self.pass_config(precision, ctx)
        run_onnx_pass(ctx.onnx_fp32, dst, ctx.calib, cfg)
        return self.artifact(precision, {self.entrypoint: dst}, [cfg.record(ctx.onnx_fp32, dst, why)])

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        from compiler.export import onnx_tensor_specs

        return (*onnx_tensor_specs(path), None)


# Transformers try dynamic INT8 first (no activation ranges to calibrate).
ONNX = OnnxFormat("onnx", precisions=("int8", "dynamic-int8", "fp16", "fp32"), auto=("int8", "fp16", "fp32"),
                  entrypoint="model.onnx", auto_transformer=("dynamic-int8", "int8", "fp16", "fp32"))
