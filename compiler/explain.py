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


def raw_layout(column_features: Sequence[str] | None, n_columns: int) -> tuple[list[str], np.ndarray] | None:
    """(raw feature names in first-seen order, column -> raw feature index) for a raw-input bundle's
    model columns (a one-hot feature spans several); None when the mapping does not fit."""
    if not column_features or len(column_features) != n_columns:
        return None
    names = list(dict.fromkeys(str(c) for c in column_features))
    return names, np.array([names.index(str(c)) for c in column_features])


def _element_reference(flat: np.ndarray, groups: np.ndarray, kind: str) -> np.ndarray:
    """The typical value of every element: the feature's median, or for a raw feature spanning
    several columns (one-hot) the most common row of those columns, so occluding it gives a real category."""
    out = np.zeros(flat.shape[1])
    for f in range(int(groups.max()) + 1):
        cols = groups == f
        if kind == "raw" and cols.sum() > 1:
            patterns, counts = np.unique(flat[:, cols], axis=0, return_counts=True)
            out[cols] = patterns[int(np.argmax(counts))]
        else:
            out[cols] = np.median(flat[:, cols])
    return out


def explain_version(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, labels: np.ndarray | None,
                    slices: np.ndarray | None, task: str, *, torch_model: Any = None,
                    schema_names: Sequence[str] | None = None, input_name: str = "input",
                    cfg: ExplainConfig | None = None, column_features: Sequence[str] | None = None) -> dict[str, Any]:
    """The manifest's `explain` section for a model with one input tensor `x` (N, ...).

    `column_features` (raw-input bundles): the raw feature behind each column of a 2-D `x`; the
    features are then the raw ones, each permuted (and occluded on the device) as one group."""
    cfg = cfg or ExplainConfig()
    x = np.asarray(x)
    kind, groups = feature_groups(tuple(x.shape[1:]))
    raw = raw_layout(column_features, int(groups.size)) if x.ndim == 2 else None
    if raw is not None:
        kind, groups = "raw", raw[1]
    n_feat = int(groups.max()) + 1
    cap = min(cfg.max_rows, max(cfg.min_rows, cfg.row_evaluations // (n_feat * cfg.repeats)))
    rows = np.unique(np.linspace(0, len(x) - 1, min(cap, len(x))).astype(int))  # evenly spread, deterministic
    x = x[rows]
    labels = None if labels is None else np.asarray(labels)[rows]
    slices = None if slices is None else np.asarray(slices)[rows]
    names = raw[0] if raw is not None else feature_names(n_feat, schema_names)
    by_class = labels is None
    target = predict(x) if labels is None else labels
    if task not in ("classification", "regression"):
        task, by_class, target = "regression", False, predict(x)  # embeddings: fidelity to own output
    base, mean, std = permutation_importance(predict, x, target, task, groups, by_class, cfg.repeats, cfg.seed)
    elem_ref = _element_reference(x.reshape(len(x), -1).astype(np.float64), groups, kind)
    reference = elem_ref if kind == "raw" else np.array([elem_ref[groups == f][0] for f in range(n_feat)])
    out: dict[str, Any] = {
        "version": 1, "input": input_name, "feature_kind": kind, "features": names,
        "method": "permutation", "metric": ("accuracy" if task == "classification" else "neg_mse")
        + ("" if labels is not None else "_vs_own_predictions"),
        "baseline_metric": round(base, DIGITS), "repeats": cfg.repeats, "seed": cfg.seed, "rows": int(len(x)),
        "importance": _ranked(names, mean, std),
        "reference": [round(float(v), DIGITS) for v in reference],  # per feature; per column for "raw"
    }
    if kind == "raw":
        out["groups"] = [int(g) for g in groups]  # column -> feature: the device occludes a feature's columns together
    if slices is not None:
        out["slices"] = _per_slice(predict, x, target, slices, task, groups, by_class,
                                   cfg, names)
    if torch_model is not None and task == "classification" and x.dtype.kind == "f":
        try:
            ref = elem_ref.reshape((1, *x.shape[1:])).astype(np.float32)
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
    schema = manifest.get("feature_schema") or manifest.get("features") or (manifest.get("preprocess") or {}).get("features")
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
    indices) so it holds whatever the features are called; None when the two views differ. On a
    raw-input bundle a drift feature is one model column: it gets its raw feature's share, split
    evenly over that feature's columns (a one-hot feature's categories share its weight)."""
    if "importance" not in explain:
        return None
    ext = baseline.get("extractor") or {}
    feats = baseline.get("features") or []
    reduce = list(ext.get("reduce_axes") or [])
    kind = explain.get("feature_kind")
    if not ((kind in ("element", "raw") and not reduce) or (kind == "channel" and reduce == [1, 2])):
        return None
    position = {n: i for i, n in enumerate(explain["features"])}
    by_index = {position[r["feature"]]: max(0.0, float(r["importance"])) for r in explain["importance"]}
    if kind == "raw":
        groups = list(explain.get("groups") or [])
        by_index = {c: by_index.get(g, 0.0) / groups.count(g) for c, g in enumerate(groups)}
    total = sum(by_index.values())
    if total <= 0:
        return None
    idx = ext.get("indices") or list(range(len(feats)))
    return {f["name"]: round(by_index.get(int(i), 0.0) / total, 6) for i, f in zip(idx, feats, strict=False)}


def column_labels(columns: Sequence[str], raw_of: Sequence[str]) -> list[str]:
    """A readable name per model column: the raw feature's name, or `feature=category` for a
    feature spanning several columns (scikit-learn's `cat__clinic_oslo` -> `clinic=oslo`)."""
    out = []
    for col, raw in zip(columns, raw_of, strict=True):
        if list(raw_of).count(raw) == 1:
            out.append(str(raw))
            continue
        bare = str(col).split("__", 1)[-1]
        out.append(f"{raw}={bare[len(raw) + 1:] if bare.startswith(raw + '_') else bare}")
    return out


def _rename_drift_features(baseline: dict[str, Any], labels: list[str]) -> None:
    """Drift features of a raw-input bundle are model columns: name them after their raw feature."""
    ext = baseline.get("extractor") or {}
    if ext.get("reduce_axes"):
        return
    idx = ext.get("indices") or list(range(len(baseline.get("features") or [])))
    names = [labels[int(i)] if 0 <= int(i) < len(labels) else f"f{i}" for i in idx]
    for feat, name in zip(baseline.get("features") or [], names, strict=False):
        feat["name"] = name
    ext["names"] = names


def explain_raw_inputs(fields: dict[str, Any], columns: Sequence[str], raw_of: Sequence[str], x: np.ndarray,
                       labels: np.ndarray | None, slices: np.ndarray | None,
                       predict: Callable[[np.ndarray], np.ndarray]) -> None:
    """Once the bundle takes raw inputs (compiler/raw_inputs.attach): explain it again over its raw
    features (`x`: the raw eval rows through the training pipeline), so importance, per-slice
    importance, device attributions and importance-weighted drift name `clinic`, not `f4..f6`.
    Integrated gradients from the column-level section are summed per raw feature."""
    old = fields.get("explain")
    if not isinstance(old, dict) or "error" in old or raw_layout(raw_of, x.shape[1] if x.ndim == 2 else -1) is None:
        return
    task = str((fields.get("metrics") or {}).get("task") or "classification")
    try:
        section = explain_version(predict, x, labels, slices, task, input_name=str(old.get("input", "input")),
                                  column_features=raw_of)
    except Exception as exc:  # keep the column-level section rather than fail the build
        old["raw_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return
    if old.get("integrated_gradients") and len(old.get("features") or []) == len(raw_of):
        ig = {r["feature"]: float(r["importance"]) for r in old["integrated_gradients"]}
        sums = np.zeros(len(section["features"]))
        for col, g in zip(old["features"], section["groups"], strict=True):
            sums[g] += ig.get(col, 0.0)
        section["integrated_gradients"] = _ranked(section["features"], sums)
    labels_ = column_labels(columns, raw_of) if len(columns) == len(raw_of) else [str(c) for c in raw_of]
    section["columns"] = labels_
    fields["explain"] = section
    base = fields.get("drift_baseline")
    if isinstance(base, dict):
        _rename_drift_features(base, labels_)
        weights = baseline_importance(section, base)
        if weights is not None:
            base["importance"] = weights
        else:
            base.pop("importance", None)  # keyed by the old column names
