"""`compile_model(CompileConfig) -> list[BuildResult]`: the whole build, one bundle per device class.

Order: validate inputs, consult the cache, distil (optional), export to FP32 ONNX (the reference),
then per device class build the candidate precisions, evaluate each in its own runtime, check the
gates, keep the fastest candidate that passes, and write the signed bundle. Latency varies from
run to run, so it lives in the report, never in the manifest (which must be byte-reproducible).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.device_classes import CatalogueError, DeviceClass, get_device_class
from agent.keys import KeyFileError, key_id, load_private_key
from compiler.candidates import CandidateResult
from compiler.config import CompileConfig
from compiler.data import Dataset
from compiler.device_build import BuildResult, Prepared, build_device_class
from compiler.errors import CompileInputError, GateFailure
from compiler.formats import get_format
from compiler.inputs import load_inputs, torch_forward
from compiler.passes import PassContext, config_fields, lineage_record
from compiler.provenance import code_version, json_sha256, tool_versions, torch_model_sha256

__all__ = ["BuildResult", "CandidateResult", "compile_model", "require_passed"]


def require_passed(results: list[BuildResult]) -> None:
    """Raise GateFailure naming every failed gate (for Python callers who want an exception)."""
    bad = [r for r in results if not r.passed]
    if bad:
        names = sorted({g for r in bad for g in r.failed_gates})
        raise GateFailure("; ".join(f"{r.device_class}: failed {', '.join(r.failed_gates)}" for r in bad), names)


# --------------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self.console.status(text):
            yield
        self.console.log(f"{text}: done")


def _signing_key(value: Any) -> Any:
    if value is None or isinstance(value, (str, Path)):
        try:
            return load_private_key(Path(str(value)))
        except (KeyFileError, OSError) as exc:
            raise CompileInputError(f"--signing-key: {exc}") from exc
    return value


def _device_classes(cfg: CompileConfig) -> list[DeviceClass]:
    try:
        return [get_device_class(n, cfg.devices_dir) for n in dict.fromkeys(cfg.device_classes)]
    except CatalogueError as exc:
        raise CompileInputError(str(exc)) from exc


def compile_model(cfg: CompileConfig) -> list[BuildResult]:
    """Build, gate and bundle the model for every device class in `cfg`; see the module docstring."""
    cfg.validate()
    progress = _Progress(cfg.progress)
    signing_key = _signing_key(cfg.signing_key)
    device_classes = _device_classes(cfg)
    if cfg.profile_on:  # fail before any compile work when no device of the class is online
        from compiler.profile_remote import check_target

        check_target(cfg, [dc.name for dc in device_classes])
    for dc in device_classes:
        _check_class(cfg, dc)

    from compiler.training_run import lineage_provenance

    lineage = lineage_provenance(cfg.training_run, cfg.parent, cfg.mlflow_run)  # training run, parent (issue 16)
    from compiler.raw_inputs import prepare as prepare_raw

    raw = prepare_raw(cfg)  # before load_inputs: may derive the eval tensors from the raw rows (issue 15)
    src = load_inputs(cfg, progress)
    if cfg.slices:  # an unknown slice column: one line, exit 2, before any build work (issue 14)
        from compiler.slice_keys import monitoring_slices

        monitoring_slices(cfg.slices, src.evaluation.inputs)
    if raw is not None:
        lineage["preprocess_sha256"] = raw.pre.sha256
    common = {"inputs": src.inputs_sha, "code_version": code_version(), "tools": tool_versions(),
              "hyperparameters": cfg.hyperparameters(), "signing_key_id": key_id(signing_key), **lineage}
    keys = {dc.name: json_sha256({**common, "device_class": dc.to_dict()}) for dc in device_classes}
    from compiler.cache import BuildCache

    cache = BuildCache(Path(cfg.cache_dir)) if cfg.cache_dir else None
    results = _from_cache(cfg, cache, device_classes, keys)
    todo = [dc for dc in device_classes if dc.name not in results]
    if todo:
        with tempfile.TemporaryDirectory(prefix="edgefleet-compile-") as tmp:
            prepared = _prepare(cfg, progress, Path(tmp), src.torch_model, src.onnx_src, src.calib, src.evaluation,
                                src.n_classes)
            prepared.raw = raw
            for dc in todo:
                res = build_device_class(cfg, progress, dc, prepared, Path(tmp) / dc.name, signing_key,
                                          {**common, "device_class": dc.to_dict(), "cache_key": keys[dc.name]},
                                          Path(cfg.out))
                res.cache_key = keys[dc.name]
                if cache and res.passed and res.bundle_path is not None:
                    cache.put(keys[dc.name], res.bundle_path, res.to_dict())
                results[dc.name] = res
    ordered = [results[dc.name] for dc in device_classes]
    if cfg.report_json:
        from compiler.report import write_json_report

        write_json_report(Path(cfg.report_json), ordered)
    if cfg.mlflow_run:
        from compiler.mlflow_link import log_build

        log_build(cfg.mlflow_run, ordered)
    return ordered


def _check_class(cfg: CompileConfig, dc: DeviceClass) -> None:
    """Refuse a format/precision/source combination before any work (one line, exit 2)."""
    plugin = get_format(cfg.format or dc.format)
    precision = cfg.precision or dc.precision
    if precision != "auto":
        plugin.check_precision(precision)
    if cfg.tflite and not plugin.takes_tflite_source:
        raise CompileInputError(f"{dc.name} takes {plugin.name} models; a --tflite source is bundled for TFLite "
                                "device classes only (or pass --format tflite)")
    if plugin.from_torch and cfg.onnx:
        from compiler.convert_tflite import ONNX_ONLY_MESSAGE

        raise CompileInputError(f"{dc.name}: {ONNX_ONLY_MESSAGE}")


def _from_cache(cfg: CompileConfig, cache: Any, device_classes: list[DeviceClass],
                keys: dict[str, str]) -> dict[str, BuildResult]:
    """The classes the build cache already holds, their bundles copied to the output folder."""
    results: dict[str, BuildResult] = {}
    for dc in device_classes:
        hit = cache.get(keys[dc.name]) if cache and dc.name != cfg.profile_on else None  # re-measure on device
        if not hit:
            continue
        bundle, stored = hit
        res = BuildResult.from_dict(stored)
        if res.bundle_path is not None:
            dest = Path(cfg.out) / Path(res.bundle_path).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle, dest)
            res.bundle_path = dest
        res.cached = True
        results[dc.name] = res
    return results


def _prepare(cfg: CompileConfig, progress: _Progress, work: Path, torch_model: Any, onnx_src: Path | None,
             calib: Dataset, evaluation: Dataset, n_classes: int | None) -> Prepared:
    """Distil (optional), export to the FP32 ONNX reference, compute reference outputs."""
    if cfg.tflite:  # the TFLite source is its own reference, run in LiteRT
        from compiler.tflite_source import prepare_context

        ctx, reference = prepare_context(cfg, Path(cfg.tflite), calib, evaluation)
        return Prepared(ctx, reference, n_classes, [], None)
    from compiler.architecture import detect
    from compiler.export import onnx_tensor_specs
    from compiler.runtimes import OnnxRunner, predict

    lineage: list[dict[str, Any]] = []
    distillation = teacher_ref = torch_sha = None
    if torch_model is not None and cfg.distill:
        torch_model, torch_sha, teacher_ref, distillation, record = _distil(cfg, progress, torch_model, calib,
                                                                            evaluation)
        lineage.append(record)
    fp32 = work / "fp32.onnx"
    if torch_model is not None:
        torch_sha = torch_sha or torch_model_sha256(torch_model)
        lineage.append(_export(cfg, progress, torch_model, torch_sha, evaluation, fp32))
    else:
        assert onnx_src is not None
        lineage.extend(_upgrade(onnx_src, fp32))
    specs, _ = onnx_tensor_specs(fp32)
    if [s["name"] for s in specs] != list(evaluation.inputs):
        rename = dict(zip(evaluation.inputs, [s["name"] for s in specs], strict=False))
        evaluation = Dataset({rename[k]: v for k, v in evaluation.inputs.items()}, evaluation.labels,
                             evaluation.slices, evaluation.source)
        calib = Dataset({rename[k]: v for k, v in calib.inputs.items()}, calib.labels, calib.slices, calib.source)
    with progress.step("computing reference outputs (FP32 ONNX Runtime)"):
        reference = predict(OnnxRunner(fp32), evaluation)
    if teacher_ref is not None:
        reference = teacher_ref  # the promised quality is the teacher's
    arch = detect(fp32)
    ctx = PassContext(fp32, torch_model, torch_sha, evaluation.take(2).inputs, calib, evaluation, arch.transformer,
                      cfg.calibrate_method, cfg.calibration_samples, arch=arch)
    return Prepared(ctx, reference, n_classes, lineage, distillation)


def _distil(cfg: CompileConfig, progress: _Progress, teacher: Any, calib: Dataset,
            evaluation: Dataset) -> tuple[Any, str, np.ndarray, dict[str, Any], dict[str, Any]]:
    """(student, its hash, the teacher's outputs, the distillation summary, the lineage record)."""
    from compiler.distill import DistillConfig, distill

    dcfg = DistillConfig(cfg.distill or "", cfg.temperature, cfg.alpha, cfg.epochs, cfg.seed)
    teacher_sha = torch_model_sha256(teacher)
    with progress.step(f"distilling into {cfg.distill}"):
        dres = distill(teacher, calib, dcfg, evaluation, progress=cfg.progress)
    student_sha = torch_model_sha256(dres.student)
    summary = dres.to_dict()
    record = lineage_record("distill", config_fields(dcfg), f"torch:{teacher_sha}", f"torch:{student_sha}",
                            metrics=summary)
    return dres.student, student_sha, torch_forward(teacher, evaluation), summary, record


def _export(cfg: CompileConfig, progress: _Progress, model: Any, torch_sha: str, evaluation: Dataset,
            fp32: Path) -> dict[str, Any]:
    """PyTorch to the FP32 ONNX reference; the lineage record says which exporter ran and why."""
    from compiler.export import ExportConfig, export_torch

    ecfg = ExportConfig(exporter=cfg.exporter)
    with progress.step("exporting to ONNX"):
        exp = export_torch(model, evaluation.take(2).inputs, fp32, ecfg)
    ran = {"used": exp.exporter, "dynamic_batch": True, "fallback_reason": exp.fallback_reason or None}
    return ecfg.record(f"torch:{torch_sha}", fp32, ran)


def _upgrade(onnx_src: Path, fp32: Path) -> list[dict[str, Any]]:
    """An ONNX source, upgraded to a QDQ-capable opset when older (one lineage record if so)."""
    import onnx

    from compiler.export import save_onnx
    from compiler.opset import upgrade_opset

    upgraded, record = upgrade_opset(onnx.load(str(onnx_src)))
    save_onnx(upgraded, fp32)
    return [] if record is None else [lineage_record("upgrade-opset", record, onnx_src, fp32)]
