"""`compile_model(CompileConfig) -> list[BuildResult]`: the whole build, one bundle per device class.

Order: validate inputs, consult the cache, distil (optional), export to FP32 ONNX (the reference),
then per device class build the candidate precisions, evaluate each in its own runtime, check the
gates, keep the fastest candidate that passes, and write the signed bundle. Latency varies from
run to run, so it lives in the report, never in the manifest (which must be byte-reproducible).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.canonical import file_sha256
from agent.device_classes import CatalogueError, DeviceClass, get_device_class
from agent.keys import KeyFileError, key_id, load_private_key
from compiler.candidates import (
    LATENCY_GATE_NAMES,
    CandidateResult,
    Evaluator,
    accuracy_fallback,
    try_candidate,
)
from compiler.config import CompileConfig
from compiler.data import Dataset
from compiler.errors import CompileInputError, GateFailure
from compiler.gates import Budgets, failed
from compiler.inputs import load_inputs, torch_forward
from compiler.manifest import manifest_for
from compiler.passes import MANIFEST_PRECISION, Artifact, PassContext, auto_chain, check_precision
from compiler.provenance import code_version, json_sha256, tool_versions, torch_model_sha256

LATENCY_TOLERANCE = 1.10
__all__ = ["BuildResult", "CandidateResult", "compile_model", "require_passed"]


@dataclass
class BuildResult:
    device_class: str
    format: str
    precision: str
    passed: bool
    bundle_path: Path | None
    metrics: dict[str, Any]
    gates: list[dict[str, Any]]
    latency: dict[str, float]
    size_bytes: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)
    cached: bool = False
    cache_key: str = ""
    distillation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"device_class": self.device_class, "format": self.format, "precision": self.precision,
                "passed": self.passed, "bundle_path": None if self.bundle_path is None else str(self.bundle_path),
                "metrics": self.metrics, "gates": self.gates, "latency": self.latency,
                "size_bytes": self.size_bytes, "candidates": self.candidates, "failed_gates": self.failed_gates,
                "cached": self.cached, "cache_key": self.cache_key, "distillation": self.distillation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildResult:
        d = dict(d)
        d["bundle_path"] = Path(d["bundle_path"]) if d.get("bundle_path") else None
        return cls(**d)


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


@dataclass
class _Prepared:
    ctx: PassContext
    reference: np.ndarray
    n_classes: int | None
    lineage: list[dict[str, Any]]
    distillation: dict[str, Any] | None
    raw: Any = None  # compiler.raw_inputs.RawContract: the training pipeline shipped in the bundle


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
        fmt = cfg.format or dc.format
        precision = cfg.precision or dc.precision
        if precision != "auto":
            check_precision(fmt, precision)
        if cfg.tflite and fmt != "tflite":
            raise CompileInputError(f"{dc.name} takes {fmt} models; a --tflite source is bundled for TFLite "
                                    "device classes only (or pass --format tflite)")
        if fmt == "tflite" and cfg.onnx:
            from compiler.convert_tflite import ONNX_ONLY_MESSAGE

            raise CompileInputError(f"{dc.name}: {ONNX_ONLY_MESSAGE}")

    from compiler.training_run import lineage_provenance

    lineage = lineage_provenance(cfg.training_run, cfg.parent, cfg.mlflow_run)  # training run, parent (issue 16)
    from compiler.raw_inputs import prepare as prepare_raw

    raw = prepare_raw(cfg)  # before load_inputs: may derive the eval tensors from the raw rows (issue 15)
    src = load_inputs(cfg, progress)
    if raw is not None:
        lineage["preprocess_sha256"] = raw.pre.sha256
    common = {"inputs": src.inputs_sha, "code_version": code_version(), "tools": tool_versions(),
              "hyperparameters": cfg.hyperparameters(), "signing_key_id": key_id(signing_key), **lineage}

    # 2. Cache look-up per device class.
    from compiler.cache import BuildCache

    cache = BuildCache(Path(cfg.cache_dir)) if cfg.cache_dir else None
    out_dir = Path(cfg.out)
    results: dict[str, BuildResult] = {}
    keys: dict[str, str] = {}
    for dc in device_classes:
        keys[dc.name] = json_sha256({**common, "device_class": dc.to_dict()})
        hit = cache.get(keys[dc.name]) if cache and dc.name != cfg.profile_on else None  # re-measure on device
        if hit:
            bundle, stored = hit
            res = BuildResult.from_dict(stored)
            if res.bundle_path is not None:
                dest = out_dir / Path(res.bundle_path).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle, dest)
                res.bundle_path = dest
            res.cached = True
            results[dc.name] = res
    todo = [dc for dc in device_classes if dc.name not in results]
    if todo:
        with tempfile.TemporaryDirectory(prefix="edgefleet-compile-") as tmp:
            prepared = _prepare(cfg, progress, Path(tmp), src.torch_model, src.onnx_src, src.calib, src.evaluation,
                                src.n_classes)
            prepared.raw = raw
            for dc in todo:
                res = _build_device_class(cfg, progress, dc, prepared, Path(tmp) / dc.name, signing_key,
                                          {**common, "device_class": dc.to_dict(), "cache_key": keys[dc.name]},
                                          out_dir)
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


def _prepare(cfg: CompileConfig, progress: _Progress, work: Path, torch_model: Any, onnx_src: Path | None,
             calib: Dataset, evaluation: Dataset, n_classes: int | None) -> _Prepared:
    """Distil (optional), export to the FP32 ONNX reference, compute reference outputs."""
    if cfg.tflite:  # the TFLite source is its own reference, run in LiteRT
        from compiler.tflite_source import prepare_context

        ctx, reference = prepare_context(cfg, Path(cfg.tflite), calib, evaluation)
        return _Prepared(ctx, reference, n_classes, [], None)
    from compiler.architecture import detect
    from compiler.export import ExportConfig, export_torch, onnx_tensor_specs, save_onnx
    from compiler.runtimes import OnnxRunner, predict

    lineage: list[dict[str, Any]] = []
    distillation = None
    teacher_ref = None
    torch_sha = None
    if torch_model is not None and cfg.distill:
        from compiler.distill import DistillConfig, distill

        dcfg = DistillConfig(cfg.distill, cfg.temperature, cfg.alpha, cfg.epochs, cfg.seed)
        teacher_sha = torch_model_sha256(torch_model)
        with progress.step(f"distilling into {cfg.distill}"):
            dres = distill(torch_model, calib, dcfg, evaluation, progress=cfg.progress)
        teacher_ref = torch_forward(torch_model, evaluation)
        torch_model = dres.student
        torch_sha = torch_model_sha256(torch_model)
        distillation = dres.to_dict()
        lineage.append({"pass": "distill", "config": dcfg.to_dict(), "input_sha256": f"torch:{teacher_sha}",
                        "output_sha256": f"torch:{torch_sha}", "metrics": distillation})
    fp32 = work / "fp32.onnx"
    if torch_model is not None:
        torch_sha = torch_sha or torch_model_sha256(torch_model)
        ecfg = ExportConfig(exporter=cfg.exporter)
        with progress.step("exporting to ONNX"):
            exp = export_torch(torch_model, evaluation.take(2).inputs, fp32, ecfg)
        lineage.append({"pass": "export", "config": {"exporter": exp.exporter, "requested": ecfg.exporter,
                                                     "opset": ecfg.opset, "dynamic_batch": True,
                                                     "fallback_reason": exp.fallback_reason or None},
                        "input_sha256": f"torch:{torch_sha}", "output_sha256": file_sha256(fp32)})
    else:
        import onnx

        from compiler.opset import upgrade_opset

        assert onnx_src is not None
        source = onnx.load(str(onnx_src))
        upgraded, record = upgrade_opset(source)
        save_onnx(upgraded, fp32)
        if record is not None:
            lineage.append({"pass": "upgrade-opset", "config": record, "input_sha256": file_sha256(onnx_src),
                            "output_sha256": file_sha256(fp32)})
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
    return _Prepared(ctx, reference, n_classes, lineage, distillation)


def _latency(c: CandidateResult) -> dict[str, Any]:
    out: dict[str, Any] = {"p50_ms": c.latency_p50_ms, "p99_ms": c.latency_p99_ms, "on_target": c.on_target}
    if not c.on_target:
        out.update(fp32_p50_ms=c.fp32_p50_ms, note=c.latency_note)
    elif c.latency_note:  # "measured on device <id>" (--profile-on)
        out["note"] = c.latency_note
    return out


def _build_device_class(cfg: CompileConfig, progress: _Progress, dc: DeviceClass, prep: _Prepared, work: Path,
                        signing_key: Any, provenance: dict[str, Any], out_dir: Path) -> BuildResult:
    fmt = cfg.format or dc.format
    requested = cfg.precision or dc.precision
    chain = auto_chain(fmt, prep.ctx.transformer) if requested == "auto" else [requested]
    budgets = Budgets.for_device(dc, max_accuracy_drop=cfg.max_accuracy_drop,
                                 max_slice_gap_increase=cfg.max_slice_gap_increase, max_size_mb=cfg.max_size_mb,
                                 max_latency_ms=cfg.max_latency_ms, min_cosine=cfg.min_cosine,
                                 min_p1_cosine=cfg.min_p1_cosine, max_p99_error=cfg.max_p99_error,
                                 max_slice_gap=cfg.max_slice_gap, min_slice_accuracy=cfg.min_slice_accuracy)
    # NNCF accuracy control keeps the OpenVINO INT8 model within the drop budget (classification).
    use_ac = cfg.accuracy_control is not False and cfg.task == "classification"
    ctx = replace(prep.ctx, accuracy_control_drop=budgets.max_accuracy_drop if use_ac else None)
    from compiler.target import fp32_runner, match_host

    evaluate = Evaluator(cfg.task, prep.reference, budgets, match_host(dc),
                         functools.cache(lambda: fp32_runner(ctx.onnx_fp32)), cfg.latency_iterations,
                         threads=dc.threads)
    if cfg.profile_on == dc.name:  # latency gated on a device of the class (compiler.profile_remote)
        from compiler.profile_remote import on_device

        evaluate = on_device(evaluate, cfg, signing_key, work)
    tried: list[tuple[CandidateResult, Artifact | None]] = []
    for precision in chain:
        with progress.step(f"{dc.name}: building and evaluating {fmt} {precision}"):
            cand = try_candidate(fmt, precision, ctx, work / precision, evaluate)
            if cfg.slice_mitigation:  # a failed slice gate: slice-balanced calibration first (issue 14)
                from compiler.slice_mitigation import mitigate_slices

                cand = mitigate_slices(fmt, ctx, work / precision, cand, evaluate)
            if cand[1] is not None and not cand[0].passed and cfg.accuracy_control is not False:
                cand = accuracy_fallback(fmt, ctx, work / precision, (cand[0], cand[1]), evaluate)
        tried.append(cand)
    passing = [(c, a) for c, a in tried if c.passed and a is not None]
    summaries = [c.to_dict() for c, _ in tried]
    if not passing:
        last = next((c for c, a in reversed(tried) if a is not None), tried[-1][0])
        names = sorted({g.gate for c, _ in tried for g in failed(c.gates)}
                       | ({"build-error"} if any(c.error for c, _ in tried) else set()))
        return BuildResult(dc.name, fmt, last.precision, False, None,
                           {} if last.quality is None else last.quality.to_dict(),
                           [g.to_dict() for g in last.gates],
                           _latency(last), last.size_bytes,
                           summaries, names, distillation=prep.distillation)
    # The fastest, where "fast" allows 10% measurement noise: among candidates that close to the
    # best p50, the earliest in the chain (lowest precision, smallest file) wins.
    best = min(c.latency_p50_ms for c, _ in passing)
    chosen, art = next((c, a) for c, a in passing if c.latency_p50_ms <= best * LATENCY_TOLERANCE)
    assert art is not None and chosen.quality is not None and chosen.outputs is not None
    metrics = {"task": cfg.task, **chosen.quality.to_dict(), "size_bytes": chosen.size_bytes,
               "budgets": budgets.to_dict(),
               "gates": {g.gate: g.passed for g in chosen.gates if g.gate not in LATENCY_GATE_NAMES}}
    if prep.distillation:
        metrics["distillation"] = prep.distillation
    manifest_fields = manifest_for(
        art, name=cfg.name, version=cfg.version, device_class=dc.name, precision=MANIFEST_PRECISION[chosen.precision],
        metrics=metrics, provenance={**provenance, "precision_requested": requested,
                                     "precision_built": chosen.precision, "lineage": prep.lineage + art.lineage},
        evaluation=prep.ctx.evaluation, predictions=chosen.outputs, task=cfg.task, n_classes=prep.n_classes,
        threads=dc.threads, source_onnx=prep.ctx.onnx_fp32)
    from compiler.explain import add_explain  # global explanations per version (issue 15)

    add_explain(manifest_fields, art, prep.ctx.evaluation, cfg.task, prep.ctx.torch_model, dc.threads)
    if prep.raw is not None:  # the parity gate (issue 15): the bundle and the training pipeline on raw rows
        from compiler.raw_inputs import attach

        parity = attach(prep.raw, art, manifest_fields, prep.ctx.onnx_fp32, dc.threads, work / "preprocess")
        if not parity.passed:
            return BuildResult(dc.name, fmt, chosen.precision, False, None, metrics,
                               [g.to_dict() for g in chosen.gates] + [parity.to_dict()], _latency(chosen),
                               chosen.size_bytes, summaries, ["parity"], distillation=prep.distillation)
        metrics["parity"] = manifest_fields["preprocess"]["parity"]
    from agent.bundle import build_bundle

    bundle_path = out_dir / f"{cfg.name}-v{cfg.version}-{dc.name}.bundle"
    with progress.step(f"{dc.name}: signing bundle"):
        build_bundle(bundle_path, art.files, manifest_fields, signing_key)
    return BuildResult(dc.name, fmt, chosen.precision, True, bundle_path, metrics,
                       [g.to_dict() for g in chosen.gates],
                       _latency(chosen), chosen.size_bytes,
                       summaries, [], False, "", prep.distillation)
