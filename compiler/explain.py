"""Global explanations of one version, computed at build time and stored in the manifest (`explain`).

Why at build: an operator (or a regulator) asks "what does v7 rely on, and what changed since v6?"
long after the eval set is gone; the answer must travel with the signed bundle and the catalogue.

- Permutation importance (model-agnostic, runs the version's own runtime): the metric drop when one
  feature's column is shuffled across the eval rows, repeated `repeats` times with a fixed seed;
  mean and standard deviation per feature, overall and per slice. The metric is accuracy against
  the labels (classification) or negative MSE (regression); without labels, agreement with the
  model's own unshuffled predictions.
- Integrated gradients (torch models only, torch imported lazily): the path integral of the
  gradient of the predicted class score from a baseline (the per-feature median) to the input,
  mean |attribution| per feature over the eval rows.
- `reference`: the per-feature median of the eval set; the device occludes features with it
  (agent/explain.py) so local explanations need no training data on the device.

Features are the columns of a (N, F) input, or the elements of a small (<= MAX_ELEMENTS) tensor
per sample (digits: 64 pixels), or the channels of a larger one. Names come from the manifest's
feature schema when present, else `f0..fN`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.explain import feature_groups

MIN_SLICE_ROWS = 20
MAX_SLICES = 16
DIGITS = 6


@dataclass(frozen=True)
class ExplainConfig:
    repeats: int = 3
    seed: int = 0
    max_rows: int = 500
    row_evaluations: int = 60_000  # rows x features x repeats: bounds the build time on wide inputs
    min_rows: int = 30
    ig_steps: int = 32


def feature_names(n: int, schema_names: Sequence[str] | None = None) -> list[str]:
    if schema_names is not None and len(schema_names) == n:
        return [str(s) for s in schema_names]
    return [f"f{i}" for i in range(n)]


def _metric(task: str, outputs: np.ndarray, target: np.ndarray, by_class: bool) -> float:
    out = outputs.reshape(len(outputs), -1)
    if task == "classification":
        pred = out.argmax(axis=1)
        tgt = target if not by_class else target.reshape(len(target), -1).argmax(axis=1)
        return float(np.mean(pred == tgt.astype(pred.dtype)))
    tgt = target.reshape(len(target), -1).astype(np.float64)
    return float(-np.mean((out.astype(np.float64) - tgt) ** 2))


def permutation_importance(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, target: np.ndarray,
                           task: str, groups: np.ndarray, by_class: bool, repeats: int,
                           seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """(baseline metric, mean drop per feature, std of the drop) for rows x."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    base = _metric(task, predict(x), target, by_class)
    n_feat = int(groups.max()) + 1
    drops = np.zeros((n_feat, repeats))
    for r in range(repeats):
        perm = rng.permutation(len(x))
        for f in range(n_feat):
            cols = groups == f
            shuffled = flat.copy()
            shuffled[:, cols] = flat[perm][:, cols]
            drops[f, r] = base - _metric(task, predict(shuffled.reshape(x.shape)), target, by_class)
    return base, drops.mean(axis=1), drops.std(axis=1)


def integrated_gradients(torch_model: Any, x: np.ndarray, baseline: np.ndarray, groups: np.ndarray,
                         steps: int) -> np.ndarray:
    """Mean |IG| per feature for the predicted output (Riemann midpoint rule, `steps` points)."""
    import torch

    model = torch_model.eval()
    xt = torch.as_tensor(x, dtype=torch.float32)
    bt = torch.as_tensor(baseline, dtype=torch.float32).expand_as(xt)
    with torch.no_grad():
        target = model(xt).reshape(len(xt), -1).argmax(dim=1)
    total = torch.zeros_like(xt)
    for k in range(steps):
        alpha = (k + 0.5) / steps
        point = (bt + alpha * (xt - bt)).requires_grad_(True)
        out = model(point).reshape(len(xt), -1)
        score = out.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, point)
        total += grad
    attr = ((xt - bt) * total / steps).detach().numpy().reshape(len(x), -1)
    per_elem = np.abs(attr).mean(axis=0)
    return np.bincount(groups, weights=per_elem, minlength=int(groups.max()) + 1)


def _ranked(names: list[str], mean: np.ndarray, std: np.ndarray | None = None) -> list[dict[str, Any]]:
    rows = []
    for i in np.argsort(-mean, kind="stable"):
        row: dict[str, Any] = {"feature": names[i], "importance": round(float(mean[i]), DIGITS)}
        if std is not None:
            row["std"] = round(float(std[i]), DIGITS)
        rows.append(row)
    return rows


def explain_version(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, labels: np.ndarray | None,
                    slices: np.ndarray | None, task: str, *, torch_model: Any = None,
                    schema_names: Sequence[str] | None = None, input_name: str = "input",
                    cfg: ExplainConfig | None = None) -> dict[str, Any]:
    """The manifest's `explain` section for a model with one input tensor `x` (N, ...)."""
    cfg = cfg or ExplainConfig()
    x = np.asarray(x)
    kind, groups = feature_groups(tuple(x.shape[1:]))
    n_feat = int(groups.max()) + 1
    cap = min(cfg.max_rows, max(cfg.min_rows, cfg.row_evaluations // (n_feat * cfg.repeats)))
    rows = np.unique(np.linspace(0, len(x) - 1, min(cap, len(x))).astype(int))  # evenly spread, deterministic
    x = x[rows]
    labels = None if labels is None else np.asarray(labels)[rows]
    slices = None if slices is None else np.asarray(slices)[rows]
    names = feature_names(n_feat, schema_names)
    by_class = labels is None
    target = predict(x) if labels is None else labels
    if task not in ("classification", "regression"):
        task, by_class, target = "regression", False, predict(x)  # embeddings: fidelity to own output
    base, mean, std = permutation_importance(predict, x, target, task, groups, by_class, cfg.repeats, cfg.seed)
    flat = x.reshape(len(x), -1).astype(np.float64)
    medians = np.array([np.median(flat[:, groups == f]) for f in range(n_feat)])
    out: dict[str, Any] = {
        "version": 1, "input": input_name, "feature_kind": kind, "features": names,
        "method": "permutation", "metric": ("accuracy" if task == "classification" else "neg_mse")
        + ("" if labels is not None else "_vs_own_predictions"),
        "baseline_metric": round(base, DIGITS), "repeats": cfg.repeats, "seed": cfg.seed, "rows": int(len(x)),
        "importance": _ranked(names, mean, std),
        "reference": [round(float(v), DIGITS) for v in medians],
    }
    if slices is not None:
        out["slices"] = _per_slice(predict, x, target, slices, task, groups, by_class,
                                   cfg, names)
    if torch_model is not None and task == "classification" and x.dtype.kind == "f":
        try:
            ref = medians[groups].reshape((1, *x.shape[1:])).astype(np.float32)
            ig = integrated_gradients(torch_model, x[:min(len(x), 200)].astype(np.float32), ref, groups,
                                      cfg.ig_steps)
            out["integrated_gradients"] = _ranked(names, ig)
        except Exception as exc:  # a non-differentiable model: permutation importance still stands
            out["integrated_gradients_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def _per_slice(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, target: np.ndarray,
               slices: np.ndarray, task: str, groups: np.ndarray, by_class: bool, cfg: ExplainConfig,
               names: list[str]) -> dict[str, Any]:
    values, counts = np.unique(slices.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:MAX_SLICES]
    result: dict[str, Any] = {}
    for i in order:
        if counts[i] < MIN_SLICE_ROWS:
            continue
        rows = slices.astype(str) == values[i]
        base, mean, std = permutation_importance(predict, x[rows], target[rows], task, groups, by_class,
                                                 cfg.repeats, cfg.seed)
        result[str(values[i])] = {"rows": int(rows.sum()), "baseline_metric": round(base, DIGITS),
                                  "importance": _ranked(names, mean, std)}
    return result


def importance_map(explain: dict[str, Any] | None) -> dict[str, float]:
    """{feature: importance} from a manifest `explain` section (negative drops clipped to 0)."""
    if not explain:
        return {}
    return {r["feature"]: max(0.0, float(r["importance"])) for r in explain.get("importance", [])}


def schema_feature_names(manifest: dict[str, Any]) -> list[str] | None:
    """Raw feature names from the manifest's feature schema (issue 15 item 2), when declared."""
    schema = manifest.get("feature_schema") or manifest.get("features")
    if isinstance(schema, dict):
        schema = schema.get("features")
    if isinstance(schema, list) and schema:
        names = [f.get("name") if isinstance(f, dict) else f for f in schema]
        if all(isinstance(n, str) for n in names):
            return names
    return None


def manifest_explain(art_fmt: str, entry_path: Any, manifest_fields: dict[str, Any], evaluation: Any, task: str,
                     torch_model: Any = None, threads: int = 1) -> dict[str, Any] | None:
    """The pipeline hook: explain the built artifact with the runtime the device will use.

    Single-input models only (multi-input models get no section rather than a wrong one)."""
    if len(evaluation.inputs) != 1:
        return None
    from compiler.runtimes import open_runner, predict

    runner = open_runner(art_fmt, entry_path, threads, manifest_fields)
    name, x = next(iter(evaluation.inputs.items()))

    def run(batch: np.ndarray) -> np.ndarray:
        return predict(runner, {name: batch.astype(x.dtype, copy=False)}, batch=256)

    return explain_version(run, x, evaluation.labels, evaluation.slices, task, torch_model=torch_model,
                           schema_names=schema_feature_names(manifest_fields), input_name=name)


def add_explain(manifest_fields: dict[str, Any], art: Any, evaluation: Any, task: str, torch_model: Any = None,
                threads: int = 1) -> None:
    """Set manifest_fields["explain"]; an explanation failure is recorded, never fails the build."""
    try:
        section = manifest_explain(art.fmt, art.entry_path, manifest_fields, evaluation, task, torch_model, threads)
    except Exception as exc:  # the version is still valid without its explanation
        section = {"version": 1, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if section is not None:
        manifest_fields["explain"] = section
        base = manifest_fields.get("drift_baseline")
        weights = baseline_importance(section, base) if isinstance(base, dict) else None
        if weights is not None:
            base["importance"] = weights  # drift reports and rollout gates weight by it (fleet/drift/importance.py)


def baseline_importance(explain: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float] | None:
    """{drift feature name: share of the importance mass}, matched by position (the drift extractor's
    indices) so it holds whatever the features are called; None when the two views differ."""
    if "importance" not in explain:
        return None
    ext = baseline.get("extractor") or {}
    feats = baseline.get("features") or []
    reduce = list(ext.get("reduce_axes") or [])
    kind = explain.get("feature_kind")
    if not ((kind == "element" and not reduce) or (kind == "channel" and reduce == [1, 2])):
        return None
    position = {n: i for i, n in enumerate(explain["features"])}
    by_index = {position[r["feature"]]: max(0.0, float(r["importance"])) for r in explain["importance"]}
    total = sum(by_index.values())
    if total <= 0:
        return None
    idx = ext.get("indices") or list(range(len(feats)))
    return {f["name"]: round(by_index.get(int(i), 0.0) / total, 6) for i, f in zip(idx, feats, strict=False)}
