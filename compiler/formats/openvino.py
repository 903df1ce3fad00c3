"""OpenVINO IR: convert_model, NNCF INT8 (accuracy control under the drop budget), FP16 or FP32."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.canonical import file_sha256
from compiler.formats.base import Format, Specs
from compiler.passes import Artifact, PassContext, kept_in_float


@dataclass(frozen=True)
class OpenVINOFormat(Format):
    def pass_config(self, precision: str, ctx: PassContext) -> tuple[Any, dict[str, Any]]:
        """(the convert pass's config, why it is what it is); FP16/FP32 read no data and no scheme."""
        from compiler.convert_openvino import OpenVINOConfig
        from compiler.schemes import openvino_scheme

        if precision != "int8":
            return OpenVINOConfig(precision=precision, calibration_samples=0), {}
        arch = ctx.architecture
        scheme = openvino_scheme(arch, ctx.scheme)
        ignored = tuple(dict.fromkeys((arch.float_nodes if scheme.ignore_float_nodes else ()) + ctx.float_nodes))
        cfg = OpenVINOConfig(precision=precision, calibration_samples=ctx.calibration_used(),
                             transformer=scheme.model_type == "transformer", scheme=scheme, ignored_nodes=ignored,
                             max_drop=ctx.accuracy_control_drop)
        return cfg, {"architecture": arch.to_dict(), "fallback_float_nodes": list(ctx.float_nodes),
                     **kept_in_float(arch, scheme.ignore_float_nodes)}

    def build(self, precision: str, ctx: PassContext, work: Path) -> Artifact:
        from compiler.convert_openvino import convert_openvino

        xml = work / self.entrypoint
        cfg, why = self.pass_config(precision, ctx)
        ran = convert_openvino(ctx.onnx_fp32, xml, cfg, ctx.calib, ctx.evaluation)
        files = {self.entrypoint: xml, "model.bin": xml.with_suffix(".bin")}
        rec = cfg.record(ctx.onnx_fp32, xml, {**ran, **why}, output_bin_sha256=file_sha256(files["model.bin"]))
        return self.artifact(precision, files, [rec])

    def io_specs(self, path: Path, source: tuple[Specs, Specs] | None) -> tuple[Specs, Specs, dict[str, Any] | None]:
        from agent.runtime_specs import io_specs

        inputs, outputs, _ = io_specs(self.name, path)
        return inputs, outputs, None


OPENVINO = OpenVINOFormat("openvino", precisions=("int8", "fp16", "fp32"), auto=("int8", "fp16", "fp32"),
                          entrypoint="model.xml")
