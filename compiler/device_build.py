"""One device class of a build: try the candidate precisions, keep the fastest that passes every
gate, write its manifest and sign the bundle. `compiler.pipeline` prepares what every class shares
(the FP32 ONNX reference, its outputs, the lineage so far) and calls `build_device_class` per class.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.device_classes import DeviceClass
from compiler.candidates import CandidateResult, Evaluator, accuracy_fallback, try_candidate
from compiler.config import CompileConfig
from compiler.formats import get_format
from compiler.gates import LATENCY_GATE_NAMES, Budgets, failed
from compiler.manifest import manifest_for
from compiler.passes import MANIFEST_PRECISION, Artifact, PassContext

LATENCY_TOLERANCE = 1.10  # p50 within 10% of the best counts as a tie
Tried = list[tuple[CandidateResult, Artifact | None]]


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


@dataclass
class Prepared:
    """What every device class of one build shares."""

    ctx: PassContext
    reference: np.ndarray
    n_classes: int | None
    lineage: list[dict[str, Any]]
    distillation: dict[str, Any] | None
    raw: Any = None  # compiler.raw_inputs.RawContract: the training pipeline shipped in the bundle


def _latency(c: CandidateResult) -> dict[str, Any]:
    out: dict[str, Any] = {"p50_ms": c.latency_p50_ms, "p99_ms": c.latency_p99_ms, "on_target": c.on_target}
    if not c.on_target:
        out.update(fp32_p50_ms=c.fp32_p50_ms, note=c.latency_note)
    elif c.latency_note:  # "measured on device <id>" (--profile-on)
        out["note"] = c.latency_note
    return out


def budgets_for(cfg: CompileConfig, dc: DeviceClass) -> Budgets:
    """The class's budgets, each overridden by its flag / config key of the same name."""
    return Budgets.for_device(dc, max_accuracy_drop=cfg.max_accuracy_drop,
                              max_slice_gap_increase=cfg.max_slice_gap_increase, max_size_mb=cfg.max_size_mb,
                              max_latency_ms=cfg.max_latency_ms, min_cosine=cfg.min_cosine,
                              min_p1_cosine=cfg.min_p1_cosine, max_p99_error=cfg.max_p99_error,
                              max_slice_gap=cfg.max_slice_gap, min_slice_accuracy=cfg.min_slice_accuracy)


def _evaluator(cfg: CompileConfig, dc: DeviceClass, prep: Prepared, budgets: Budgets, work: Path,
               signing_key: Any) -> tuple[PassContext, Evaluator]:
    # NNCF accuracy control keeps the OpenVINO INT8 model within the drop budget (classification).
    use_ac = cfg.accuracy_control is not False and cfg.task == "classification"
    ctx = replace(prep.ctx, accuracy_control_drop=budgets.max_accuracy_drop if use_ac else None,
                  reduce_range=dc.reduce_range)
    from compiler.target import fp32_runner, match_host

    evaluate = Evaluator(cfg.task, prep.reference, budgets, match_host(dc),
                         functools.cache(lambda: fp32_runner(ctx.onnx_fp32)), cfg.latency_iterations,
                         threads=dc.threads)
    if cfg.profile_on == dc.name:  # latency gated on a device of the class (compiler.profile_remote)
        from compiler.profile_remote import on_device

        evaluate = on_device(evaluate, cfg, signing_key, work)
    return ctx, evaluate


def _try_chain(cfg: CompileConfig, progress: Any, dc: DeviceClass, fmt: str, chain: list[str], ctx: PassContext,
               work: Path, evaluate: Evaluator) -> Tried:
    tried: Tried = []
    for precision in chain:
        with progress.step(f"{dc.name}: building and evaluating {fmt} {precision}"):
            cand = try_candidate(fmt, precision, ctx, work / precision, evaluate)
            if cfg.slice_mitigation:  # a failed slice gate: slice-balanced calibration first (issue 14)
                from compiler.slice_mitigation import mitigate_slices

                cand = mitigate_slices(fmt, ctx, work / precision, cand, evaluate)
            if cand[1] is not None and not cand[0].passed and cfg.accuracy_control is not False:
                cand = accuracy_fallback(fmt, ctx, work / precision, (cand[0], cand[1]), evaluate)
        tried.append(cand)
    return tried


def _none_passed(dc: DeviceClass, fmt: str, tried: Tried, prep: Prepared) -> BuildResult:
    last = next((c for c, a in reversed(tried) if a is not None), tried[-1][0])
    names = sorted({g.gate for c, _ in tried for g in failed(c.gates)}
                   | ({"build-error"} if any(c.error for c, _ in tried) else set()))
    return BuildResult(dc.name, fmt, last.precision, False, None,
                       {} if last.quality is None else last.quality.to_dict(), [g.to_dict() for g in last.gates],
                       _latency(last), last.size_bytes, [c.to_dict() for c, _ in tried], names,
                       distillation=prep.distillation)


def build_device_class(cfg: CompileConfig, progress: Any, dc: DeviceClass, prep: Prepared, work: Path,
                       signing_key: Any, provenance: dict[str, Any], out_dir: Path) -> BuildResult:
    fmt = cfg.format or dc.format
    requested = cfg.precision or dc.precision
    chain = list(get_format(fmt).auto_chain(prep.ctx.transformer)) if requested == "auto" else [requested]
    budgets = budgets_for(cfg, dc)
    ctx, evaluate = _evaluator(cfg, dc, prep, budgets, work, signing_key)
    tried = _try_chain(cfg, progress, dc, fmt, chain, ctx, work, evaluate)
    passing = [(c, a) for c, a in tried if c.passed and a is not None]
    if not passing:
        return _none_passed(dc, fmt, tried, prep)
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
    provenance = {**provenance, "precision_requested": requested, "precision_built": chosen.precision,
                  "lineage": prep.lineage + art.lineage}
    return _bundle(cfg, progress, dc, prep, work, signing_key, out_dir, (chosen, art), metrics, provenance,
                   [c.to_dict() for c, _ in tried])


def _bundle(cfg: CompileConfig, progress: Any, dc: DeviceClass, prep: Prepared, work: Path, signing_key: Any,
            out_dir: Path, kept: tuple[CandidateResult, Artifact], metrics: dict[str, Any],
            provenance: dict[str, Any], summaries: list[dict[str, Any]]) -> BuildResult:
    """The manifest of the kept candidate, explanations, the parity gate, then the signed bundle."""
    chosen, art = kept
    assert chosen.outputs is not None
    manifest_fields = manifest_for(
        art, name=cfg.name, version=cfg.version, device_class=dc.name, precision=MANIFEST_PRECISION[chosen.precision],
        metrics=metrics, provenance=provenance, evaluation=prep.ctx.evaluation, predictions=chosen.outputs,
        task=cfg.task, n_classes=prep.n_classes, threads=dc.threads, source_onnx=prep.ctx.onnx_fp32,
        slice_keys=cfg.slices)
    from compiler.explain import add_explain  # global explanations per version (issue 15)

    add_explain(manifest_fields, art, prep.ctx.evaluation, cfg.task, prep.ctx.torch_model, dc.threads)
    gates = [g.to_dict() for g in chosen.gates]
    if prep.raw is not None:  # the parity gate (issue 15): the bundle and the training pipeline on raw rows
        from compiler.raw_inputs import attach

        parity = attach(prep.raw, art, manifest_fields, prep.ctx.onnx_fp32, dc.threads, work / "preprocess")
        if not parity.passed:
            return BuildResult(dc.name, art.fmt, chosen.precision, False, None, metrics, gates + [parity.to_dict()],
                               _latency(chosen), chosen.size_bytes, summaries, ["parity"],
                               distillation=prep.distillation)
        metrics["parity"] = manifest_fields["preprocess"]["parity"]
    from agent.bundle import build_bundle

    bundle_path = out_dir / f"{cfg.name}-v{cfg.version}-{dc.name}.bundle"
    with progress.step(f"{dc.name}: signing bundle"):
        build_bundle(bundle_path, art.files, manifest_fields, signing_key)
    return BuildResult(dc.name, art.fmt, chosen.precision, True, bundle_path, metrics, gates, _latency(chosen),
                       chosen.size_bytes, summaries, [], False, "", prep.distillation)
