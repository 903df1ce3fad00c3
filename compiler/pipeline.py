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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.canonical import file_sha256
from agent.device_classes import CatalogueError, DeviceClass, get_device_class
from agent.keys import KeyFileError, key_id, load_private_key
from compiler.config import CompileConfig
from compiler.data import Dataset, cast_to_spec, load_dataset, validate_dataset
from compiler.errors import CompileInputError, GateFailure
from compiler.evaluate import QualityMetrics, quality
from compiler.gates import Budgets, GateResult, check_gates, failed
from compiler.manifest import manifest_for
from compiler.passes import (
    MANIFEST_PRECISION,
    Artifact,
    PassContext,
    auto_chain,
    build_artifact,
    check_precision,
)
from compiler.provenance import code_version, json_sha256, tool_versions, torch_model_sha256

LATENCY_TOLERANCE = 1.10


@dataclass
class CandidateResult:
    precision: str
    quality: QualityMetrics | None
    size_bytes: int
    latency_p50_ms: float
    latency_p99_ms: float
    gates: list[GateResult]
    error: str | None = None
    outputs: np.ndarray | None = field(default=None, repr=False)  # eval-set outputs, for the drift baseline

    @property
    def passed(self) -> bool:
        return self.error is None and not failed(self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "passed": self.passed, "error": self.error,
                "size_bytes": self.size_bytes, "latency_p50_ms": self.latency_p50_ms,
                "latency_p99_ms": self.latency_p99_ms,
                "metrics": None if self.quality is None else self.quality.to_dict(),
                "gates": [g.to_dict() for g in self.gates]}


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


def _load_onnx_source(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CompileInputError(f"--onnx {p}: no such file")
    import onnx

    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise CompileInputError(f"--onnx {p} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from exc
    return p


def _pre_specs(cfg: CompileConfig, ds: Dataset) -> list[dict[str, Any]]:
    """Input specs of a PyTorch model before export: from --example-input, else from the data."""
    specs = []
    for i, (name, arr) in enumerate(ds.inputs.items()):
        shape = list(cfg.example_input) if (cfg.example_input and i == 0) else list(arr.shape)
        dtype = "float32" if arr.dtype.kind == "f" else "int64"
        specs.append({"name": name, "shape": ["batch", *shape[1:]], "dtype": dtype})
    return specs


def _torch_forward(model: Any, ds: Dataset) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(*(torch.from_numpy(np.ascontiguousarray(v)) for v in ds.inputs.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().numpy().astype(np.float32)


@dataclass
class _Prepared:
    ctx: PassContext
    reference: np.ndarray
    n_classes: int | None
    lineage: list[dict[str, Any]]
    distillation: dict[str, Any] | None


@dataclass
class _Inputs:
    torch_model: Any
    onnx_src: Path | None
    evaluation: Dataset
    calib: Dataset
    n_classes: int | None
    inputs_sha: dict[str, str]


def _load_inputs(cfg: CompileConfig, progress: _Progress) -> _Inputs:
    """Load the model source and the data and validate the data against the model's inputs."""
    torch_model = None
    onnx_src: Path | None = None
    n_out: Any = None
    if cfg.onnx:
        from compiler.export import onnx_tensor_specs

        onnx_src = _load_onnx_source(cfg.onnx)
        specs, out_specs = onnx_tensor_specs(onnx_src)
        names: list[str] | None = [s["name"] for s in specs]
        model_sha = file_sha256(onnx_src)
        n_out = out_specs[0]["shape"][-1] if out_specs and out_specs[0]["shape"] else None
    else:
        from compiler.loading import load_torch_model

        with progress.step("loading the PyTorch model"):
            torch_model = load_torch_model(cfg.torch)
        names = None
        model_sha = torch_model_sha256(torch_model)
    evaluation = load_dataset(cfg.eval, names)
    calib = load_dataset(cfg.calib, list(evaluation.inputs)) if cfg.calib is not None else evaluation
    if torch_model is not None:
        specs = _pre_specs(cfg, evaluation)
        if _shapes_ok(evaluation, specs):
            evaluation = cast_to_spec(evaluation, specs)
            if cfg.task == "classification":
                n_out = int(_torch_forward(torch_model, evaluation.take(2)).shape[-1])
    n_classes = n_out if cfg.task == "classification" and isinstance(n_out, int) else None
    validate_dataset(evaluation, specs, task=cfg.task, n_classes=n_classes,
                     need_labels=cfg.task == "classification", min_slice_size=cfg.min_slice_size, role="--eval")
    validate_dataset(calib, specs, task=cfg.task, n_classes=n_classes, min_slice_size=1, role="--calib")
    evaluation, calib = cast_to_spec(evaluation, specs), cast_to_spec(calib, specs)
    # File sources are named by base name: the same file elsewhere must give the same manifest.
    spec = cfg.onnx or cfg.torch
    if isinstance(spec, (str, Path)):
        source = Path(spec).name if Path(spec).is_file() else str(spec)
    else:
        source = type(spec).__qualname__
    inputs_sha = {"model": model_sha, "model_source": source, "calib": calib.sha256(), "eval": evaluation.sha256()}
    if cfg.distill:
        inputs_sha["student"] = cfg.distill
    return _Inputs(torch_model, onnx_src, evaluation, calib, n_classes, inputs_sha)


def compile_model(cfg: CompileConfig) -> list[BuildResult]:
    """Build, gate and bundle the model for every device class in `cfg`; see the module docstring."""
    cfg.validate()
    progress = _Progress(cfg.progress)
    signing_key = _signing_key(cfg.signing_key)
    device_classes = _device_classes(cfg)
    for dc in device_classes:
        fmt = cfg.format or dc.format
        precision = cfg.precision or dc.precision
        if precision != "auto":
            check_precision(fmt, precision)
        if fmt == "tflite" and cfg.onnx:
            from compiler.convert_tflite import ONNX_ONLY_MESSAGE

            raise CompileInputError(f"{dc.name}: {ONNX_ONLY_MESSAGE}")

    src = _load_inputs(cfg, progress)
    common = {"inputs": src.inputs_sha, "code_version": code_version(), "tools": tool_versions(),
              "hyperparameters": cfg.hyperparameters(), "signing_key_id": key_id(signing_key)}

    # 2. Cache look-up per device class.
    from compiler.cache import BuildCache

    cache = BuildCache(Path(cfg.cache_dir)) if cfg.cache_dir else None
    out_dir = Path(cfg.out)
    results: dict[str, BuildResult] = {}
    keys: dict[str, str] = {}
    for dc in device_classes:
        keys[dc.name] = json_sha256({**common, "device_class": dc.to_dict()})
        hit = cache.get(keys[dc.name]) if cache else None
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
    return ordered


def _shapes_ok(ds: Dataset, specs: list[dict[str, Any]]) -> bool:
    try:
        validate_dataset(ds, specs, task="embedding", min_slice_size=1)
        return True
    except CompileInputError:
        return False


def _prepare(cfg: CompileConfig, progress: _Progress, work: Path, torch_model: Any, onnx_src: Path | None,
             calib: Dataset, evaluation: Dataset, n_classes: int | None) -> _Prepared:
    """Distil (optional), export to the FP32 ONNX reference, compute reference outputs."""
    from compiler.export import ExportConfig, export_torch, onnx_tensor_specs, save_onnx
    from compiler.quantize_onnx import looks_like_transformer
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
        teacher_ref = _torch_forward(torch_model, evaluation)
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

        assert onnx_src is not None
        save_onnx(onnx.load(str(onnx_src)), fp32)
    specs, _ = onnx_tensor_specs(fp32)
    if [s["name"] for s in specs] != list(evaluation.inputs):
        rename = dict(zip(evaluation.inputs, [s["name"] for s in specs], strict=False))
        evaluation = Dataset({rename[k]: v for k, v in evaluation.inputs.items()}, evaluation.labels,
                             evaluation.slices, evaluation.source)
        calib = Dataset({rename[k]: v for k, v in calib.inputs.items()}, calib.labels, calib.slices, calib.source)
    with progress.step("computing reference outputs (FP32 ONNX Runtime)"):
        reference = predict(OnnxRunner(fp32), evaluation.inputs)
    if teacher_ref is not None:
        reference = teacher_ref  # the promised quality is the teacher's
    transformer = looks_like_transformer(fp32)
    ctx = PassContext(fp32, torch_model, torch_sha, evaluation.take(2).inputs, calib, evaluation, transformer,
                      cfg.calibrate_method, cfg.calibration_samples)
    return _Prepared(ctx, reference, n_classes, lineage, distillation)


def _evaluate(cfg: CompileConfig, art: Artifact, prep: _Prepared, budgets: Budgets) -> CandidateResult:
    from compiler.runtimes import measure_latency, open_runner, predict

    ev = prep.ctx.evaluation
    runner = open_runner(art.fmt, art.entry_path, threads=1)
    outputs = predict(runner, ev.inputs)
    q = quality(cfg.task, outputs, prep.reference, ev.labels, ev.slices)
    lat = measure_latency(runner, ev.inputs, iterations=cfg.latency_iterations)
    if lat.p99_ms > budgets.max_latency_ms:
        # One scheduler hiccup on a shared build machine must not fail a build: confirm once.
        again = measure_latency(runner, ev.inputs, iterations=cfg.latency_iterations)
        lat = min(lat, again, key=lambda m: m.p99_ms)
    gates = check_gates(q, art.size_bytes, lat.p99_ms, budgets)
    art.lineage.append({"pass": "evaluate", "config": {"runtime": art.fmt, "samples": ev.n, "task": cfg.task},
                        "input_sha256": file_sha256(art.entry_path), "output_sha256": None,
                        "metrics": q.to_dict()})
    return CandidateResult(art.precision, q, art.size_bytes, lat.p50_ms, lat.p99_ms, gates, outputs=outputs)


def _build_device_class(cfg: CompileConfig, progress: _Progress, dc: DeviceClass, prep: _Prepared, work: Path,
                        signing_key: Any, provenance: dict[str, Any], out_dir: Path) -> BuildResult:
    fmt = cfg.format or dc.format
    requested = cfg.precision or dc.precision
    chain = auto_chain(fmt, prep.ctx.transformer) if requested == "auto" else [requested]
    budgets = Budgets.for_device(dc, max_accuracy_drop=cfg.max_accuracy_drop,
                                 max_slice_gap_increase=cfg.max_slice_gap_increase, max_size_mb=cfg.max_size_mb,
                                 max_latency_ms=cfg.max_latency_ms)
    # NNCF accuracy control keeps the OpenVINO INT8 model within the drop budget (classification).
    use_ac = cfg.accuracy_control is not False and cfg.task == "classification"
    ctx = replace(prep.ctx, accuracy_control_drop=budgets.max_accuracy_drop if use_ac else None)
    tried: list[tuple[CandidateResult, Artifact | None]] = []
    for precision in chain:
        with progress.step(f"{dc.name}: building {fmt} {precision}"):
            try:
                art = build_artifact(fmt, precision, ctx, work / precision)
            except CompileInputError:
                raise
            except Exception as exc:  # a converter gap fails this build (exit 1), not the whole run
                tried.append((CandidateResult(precision, None, 0, 0.0, 0.0, [],
                                              f"{type(exc).__name__}: {str(exc)[:200]}"), None))
                continue
        with progress.step(f"{dc.name}: evaluating {fmt} {precision} in its runtime"):
            tried.append((_evaluate(cfg, art, prep, budgets), art))
    passing = [(c, a) for c, a in tried if c.passed and a is not None]
    summaries = [c.to_dict() for c, _ in tried]
    if not passing:
        last = next((c for c, a in reversed(tried) if a is not None), tried[-1][0])
        names = sorted({g.gate for c, _ in tried for g in failed(c.gates)} or {"build-error"})
        return BuildResult(dc.name, fmt, last.precision, False, None,
                           {} if last.quality is None else last.quality.to_dict(),
                           [g.to_dict() for g in last.gates],
                           {"p50_ms": last.latency_p50_ms, "p99_ms": last.latency_p99_ms}, last.size_bytes,
                           summaries, names, distillation=prep.distillation)
    # The fastest, where "fast" allows 10% measurement noise: among candidates that close to the
    # best p50, the earliest in the chain (lowest precision, smallest file) wins.
    best = min(c.latency_p50_ms for c, _ in passing)
    chosen, art = next((c, a) for c, a in passing if c.latency_p50_ms <= best * LATENCY_TOLERANCE)
    assert art is not None and chosen.quality is not None and chosen.outputs is not None
    metrics = {"task": cfg.task, **chosen.quality.to_dict(), "size_bytes": chosen.size_bytes,
               "budgets": budgets.to_dict(),
               "gates": {g.gate: g.passed for g in chosen.gates if g.gate != "max-latency-ms"}}
    if prep.distillation:
        metrics["distillation"] = prep.distillation
    manifest_fields = manifest_for(
        art, name=cfg.name, version=cfg.version, device_class=dc.name, precision=MANIFEST_PRECISION[chosen.precision],
        metrics=metrics, provenance={**provenance, "precision_requested": requested,
                                     "precision_built": chosen.precision, "lineage": prep.lineage + art.lineage},
        evaluation=prep.ctx.evaluation, predictions=chosen.outputs, task=cfg.task, n_classes=prep.n_classes)
    from agent.bundle import build_bundle

    bundle_path = out_dir / f"{cfg.name}-v{cfg.version}-{dc.name}.bundle"
    with progress.step(f"{dc.name}: signing bundle"):
        build_bundle(bundle_path, art.files, manifest_fields, signing_key)
    return BuildResult(dc.name, fmt, chosen.precision, True, bundle_path, metrics,
                       [g.to_dict() for g in chosen.gates],
                       {"p50_ms": chosen.latency_p50_ms, "p99_ms": chosen.latency_p99_ms}, chosen.size_bytes,
                       summaries, [], False, "", prep.distillation)
