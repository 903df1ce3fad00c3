"""OpenVINO IR: convert_model, NNCF INT8 (accuracy control under the drop budget), FP16 or FP32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.canonical import file_sha256
from compiler.formats.base import Format, Specs, Step
from compiler.passes import Artifact, PassContext, kept_in_float


@dataclass(frozen=True)
class OpenVINOFormat(Format):
    def step(self, precision: str, ctx: PassContext) -> Step | None:
        """The convert pass; FP16/FP32 read no data and take no scheme."""
        from compiler.convert_openvino import OpenVINOConfig
        from compiler.schemes import openvino_scheme

        model = file_sha256(ctx.onnx_fp32)
        if precision != "int8":
            return Step(OpenVINOConfig(precision=precision, calibration_samples=0), {}, (model,))
        arch = ctx.architecture
        scheme = openvino_scheme(arch, ctx.scheme)
        ignored = tuple(dict.fromkeys((arch.float_nodes if scheme.ignore_float_nodes else ()) + ctx.float_nodes))
        cfg = OpenVINOConfig(precision=precision, calibration_samples=ctx.calibration_used(),
                             transformer=scheme.model_type == "transformer", scheme=scheme, ignored_nodes=ignored,
                             max_drop=ctx.accuracy_control_drop, reduce_range=ctx.reduce_range)
        why = {"architecture": arch.to_dict(), "fallback_float_nodes": list(ctx.float_nodes),
               **kept_in_float(arch, scheme.ignore_float_nodes)}
        # Accuracy control also reads the validation set.
        reads = (model, ctx.calib.sha256(), *((ctx.evaluation.sha256(),) if cfg.max_drop is not None else ()))
        return Step(cfg, why, reads)

    def run(self, precision: str, step: Step | None, ctx: PassContext, work: Path) -> Artifact:
        from compiler.convert_openvino import convert_openvino

        assert step is not None
        xml = work / self.entrypoint
        ran = convert_openvino(ctx.onnx_fp32, xml, step.config, ctx.calib, ctx.evaluation)  # type: ignore[arg-type]
        files = {self.entrypoint: xml, "model.bin": xml.with_suffix(".bin")}
        rec = step.config.record(step.reads[0], xml, {**ran, **step.why},
                                 output_bin_sha256=file_sha256(files["model.bin"]))
        return self.artifact(precision, files, [rec])

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        from agent.runtime_specs import io_specs

        inputs, outputs, _ = io_specs(self.name, path)
        return inputs, outputs, None


OPENVINO = OpenVINOFormat("openvino", precisions=("int8", "fp16", "fp32"), auto=("int8", "fp16", "fp32"),
                          entrypoint="model.xml")
