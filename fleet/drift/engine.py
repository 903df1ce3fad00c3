"""Fleet drift: merge histograms over many devices (exact addition on shared edges) and compare
them with the bundle's baseline or with a control cohort, per feature and for predictions.

`compare(current, reference, settings)` is the reusable entry point (rollout gates call it):
  current:   telemetry payloads (list), one payload, or a merged aggregate payload
  reference: the manifest's `drift_baseline`, or payloads of the control cohort
Merging is vectorised: all device counts go into one (devices x bins) integer matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from agent.sketches import edges_hash as _edges_hash
from agent.sketches import js_distance, psi
from fleet.drift.importance import importance_weights, weighted_share
from fleet.settings import DriftSettings, FleetSettings

LEVELS = ("insufficient", "ok", "warn", "alert")


@dataclass
class Histograms:
    """Merged histograms: one count vector per feature plus the prediction histogram."""

    names: list[str]
    hashes: list[str | None]
    counts: list[np.ndarray]
    prediction: np.ndarray | None = None
    prediction_kind: str | None = None
    n_payloads: int = 0
    skipped: int = 0  # payloads whose layout (names / edges) differs from the reference
    nan: list[int] | None = None  # NaN counts per feature (merged payloads only)
    prediction_nan: int = 0

    @property
    def n_samples(self) -> int:
        return int(self.counts[0].sum()) if self.counts else (
            int(self.prediction.sum()) if self.prediction is not None else 0)


@dataclass
class FeatureDrift:
    name: str
    psi: float
    js: float
    n_current: int
    n_reference: int
    level: str
    threshold_warn: float
    threshold_alert: float
    current: list[int] = field(default_factory=list)
    reference: list[int] = field(default_factory=list)


@dataclass
class DriftReport:
    reference: str
    level: str
    sufficient: bool
    n_current: int
    n_reference: int
    features: list[FeatureDrift]
    prediction: FeatureDrift | None
    drifted_features: list[str]
    drifted_share: float
    dataset_drift: bool
    n_payloads: int = 0
    skipped_payloads: int = 0
    # issue 15: with the version's importance, drifted_share is the drifted importance mass
    importance_weighted: bool = False
    drifted_count_share: float | None = None
    ignored_drift: list[str] = field(default_factory=list)  # drifted, but the model ignores them
    importance: dict[str, float] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        return self.level == "alert"

    def to_dict(self, with_counts: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_counts:
            for f in d["features"] + ([d["prediction"]] if d["prediction"] else []):
                f.pop("current", None)
                f.pop("reference", None)
        return d

    def feature(self, name: str) -> FeatureDrift:
        return next(f for f in self.features if f.name == name)


def _drift_settings(settings: FleetSettings | DriftSettings | None) -> DriftSettings:
    if settings is None:
        return DriftSettings()
    return settings.drift if isinstance(settings, FleetSettings) else settings


def from_baseline(baseline: Mapping[str, Any]) -> Histograms:
    """Histograms of a manifest's drift_baseline (edges hash recomputed from its edges)."""
    feats = baseline.get("features") or []
    pred = baseline.get("prediction")
    return Histograms(
        names=[f["name"] for f in feats],
        hashes=[f.get("edges_hash") or _edges_hash(f["edges"]) for f in feats],
        counts=[np.asarray(f["counts"], dtype=np.int64) for f in feats],
        prediction=None if not pred else np.asarray(pred["counts"], dtype=np.int64),
        prediction_kind=None if not pred else pred.get("kind"),
        n_payloads=1,
    )


def merge_payloads(payloads: Sequence[Mapping[str, Any]], layout: Histograms | None = None) -> Histograms:
    """Add up the histograms of many payloads. With `layout`, payloads whose feature names or
    edge hashes differ from it are skipped (and counted) instead of silently mixed in."""
    payloads = [p for p in payloads if p.get("features") or p.get("prediction")]
    if not payloads:
        names = [] if layout is None else list(layout.names)
        return Histograms(names, [] if layout is None else list(layout.hashes),
                          [np.zeros_like(c) for c in layout.counts] if layout else [],
                          None if layout is None or layout.prediction is None else np.zeros_like(layout.prediction),
                          None if layout is None else layout.prediction_kind)
    first = payloads[0]
    if layout is None:
        feats0 = first.get("features") or []
        names = [f["name"] for f in feats0]
        hashes = [f.get("edges_hash") for f in feats0]
        sizes = [len(f["counts"]) for f in feats0]
        pred0 = first.get("prediction")
        pred_size = len(pred0["counts"]) if pred0 else 0
        pred_kind = pred0.get("kind") if pred0 else None
    else:
        names, hashes = list(layout.names), list(layout.hashes)
        sizes = [len(c) for c in layout.counts]
        pred_size = 0 if layout.prediction is None else len(layout.prediction)
        pred_kind = layout.prediction_kind
    key = (tuple(names), tuple(hashes), tuple(sizes))
    good: list[Mapping[str, Any]] = []
    skipped = 0
    for p in payloads:
        feats = p.get("features") or []
        pred = p.get("prediction")
        ok = (tuple(f["name"] for f in feats), tuple(f.get("edges_hash") for f in feats),
              tuple(len(f["counts"]) for f in feats)) == key
        ok = ok and (pred_size == 0 or (pred is not None and len(pred["counts"]) == pred_size))
        if ok:
            good.append(p)
        else:
            skipped += 1
    total_bins = sum(sizes)
    if good and total_bins:
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(f["counts"] for f in p["features"]) for p in good),
                           dtype=np.int64, count=len(good) * total_bins)
        sums = flat.reshape(len(good), total_bins).sum(axis=0)
        splits = np.cumsum(sizes)[:-1]
        counts = [np.asarray(c) for c in np.split(sums, splits)]
    else:
        counts = [np.zeros(s, dtype=np.int64) for s in sizes]
    nan = None
    if good and sizes:
        nflat = np.fromiter(chain.from_iterable((f.get("nan", 0) for f in p["features"]) for p in good),
                            dtype=np.int64, count=len(good) * len(sizes))
        nan = nflat.reshape(len(good), len(sizes)).sum(axis=0).tolist()
    prediction = None
    pred_nan = sum(int(p["prediction"].get("nan", 0)) for p in good) if pred_size else 0
    if pred_size:
        if good:
            pflat = np.fromiter(chain.from_iterable(p["prediction"]["counts"] for p in good), dtype=np.int64,
                                count=len(good) * pred_size)
            prediction = pflat.reshape(len(good), pred_size).sum(axis=0)
        else:
            prediction = np.zeros(pred_size, dtype=np.int64)
    return Histograms(names, hashes, counts, prediction, pred_kind, len(good), skipped, nan, pred_nan)


def _as_histograms(obj: Any, layout: Histograms | None = None) -> tuple[Histograms, str]:
    if isinstance(obj, Histograms):
        return obj, "histograms"
    if isinstance(obj, Mapping):
        if "extractor" in obj or ("features" in obj and obj.get("features") and "edges" in obj["features"][0]):
            return from_baseline(obj), "baseline"
        return merge_payloads([obj], layout), "payloads"
    return merge_payloads(list(obj), layout), "payloads"


def chi2_quantile(p: float, dof: int) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (good to a few % for dof >= 1)."""
    # inverse normal by Acklam's rational approximation is overkill here; bisection on erf is fine
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    z = (lo + hi) / 2
    k = max(1, dof)
    return k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def _level(psi_v: float, js_v: float, warn: float, alert: float, ds: DriftSettings) -> str:
    if psi_v >= alert or (ds.js_alert is not None and js_v >= ds.js_alert):
        return "alert"
    if psi_v >= warn or (ds.js_warn is not None and js_v >= ds.js_warn):
        return "warn"
    return "ok"


def _feature_drift(name: str, ref: np.ndarray, cur: np.ndarray, ds: DriftSettings, sufficient: bool) -> FeatureDrift:
    n, m = int(cur.sum()), int(ref.sum())
    psi_v = float(psi(ref, cur, ds.eps)) if n and m else 0.0
    js_v = float(js_distance(ref, cur)) if n and m else 0.0
    # PSI under no drift is about chi2(B-1) * (1/n + 1/m): never alarm below that noise floor.
    noise = chi2_quantile(0.999, len(ref) - 1) * (1 / max(n, 1) + 1 / max(m, 1))
    warn, alert = max(ds.psi_warn, noise), max(ds.psi_alert, noise)
    level = _level(psi_v, js_v, warn, alert, ds) if sufficient else "insufficient"
    return FeatureDrift(name, round(psi_v, 6), round(js_v, 6), n, m, level, round(warn, 6), round(alert, 6),
                        [int(x) for x in cur], [int(x) for x in ref])


def compare(current: Any, reference: Any, settings: FleetSettings | DriftSettings | None = None,
            *, reference_label: str | None = None, importance: Mapping[str, float] | None = None) -> DriftReport:
    """Drift of `current` against `reference` (a drift_baseline or control payloads). Importance
    (`importance`, else the baseline's own) weights the drifted share (fleet/drift/importance.py)."""
    weights = importance_weights(reference if isinstance(reference, Mapping) else None, importance)
    ds = _drift_settings(settings)
    ref, kind = _as_histograms(reference)
    cur, _ = _as_histograms(current, layout=ref)
    n_cur, n_ref = cur.n_samples, ref.n_samples
    # A baseline usually holds a few hundred reference samples: the reference needs fewer; the
    # noise floor below (1/n + 1/m) accounts for a small reference anyway.
    min_ref = ds.min_samples if kind == "payloads" else ds.min_reference_samples
    sufficient = n_cur >= ds.min_samples and n_ref >= min_ref
    features = [_feature_drift(name, r, c, ds, sufficient)
                for name, r, c in zip(ref.names, ref.counts, cur.counts, strict=True)]
    prediction = None
    if ref.prediction is not None and cur.prediction is not None:
        prediction = _feature_drift("prediction", ref.prediction, cur.prediction, ds, sufficient)
    top = features[: ds.top_features] if ds.top_features else features
    drifted = [f.name for f in top if f.level in ("warn", "alert")]
    ws = weighted_share(drifted, [f.name for f in top], weights)
    share = ws.share
    ignored = set(ws.ignored) | ({f.name for f in top if ws.weights.get(f.name, 0.0) <= 0} if ws.weighted else set())
    dataset_drift = sufficient and bool(top) and share >= ds.dataset_drift_share
    if not sufficient:
        level = "insufficient"
    elif dataset_drift or (prediction is not None and prediction.level == "alert"):
        level = "alert"
    elif ws.counted or (prediction is not None and prediction.level == "warn") or any(
            f.level == "alert" and f.name not in ignored for f in features):
        level = "warn"
    else:
        level = "ok"
    return DriftReport(reference_label or kind, level, sufficient, n_cur, n_ref, features, prediction, drifted,
                       round(share, 4), dataset_drift, cur.n_payloads, cur.skipped, ws.weighted,
                       ws.count_share, ws.ignored, ws.weights)


def worst(levels: Iterable[str]) -> str:
    return max(levels, key=LEVELS.index, default="ok")
