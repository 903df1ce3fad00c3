"""The one drift engine: compare merged histograms with the bundle's baseline or a control
cohort, per feature and for predictions. Every setting is a parameter (DriftParams): the console,
alerts and retraining pass the fleet's [drift] settings, rollout gates their spec's limits.

`compare(current, reference, params)` judges one reference:
  current:   telemetry payloads (list), one payload, a merged aggregate payload, or Histograms
  reference: the manifest's `drift_baseline`, payloads of the control cohort, or Histograms
`judge(current, {label: reference}, params)` judges several references at once (a feature drifted
if it drifted against any of them): what a rollout gate decides, and what the console shows.
Payloads are added up by fleet.ingest.aggregate (the one merge); features pair up by name and
edges hash, so histograms on other edges are never compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np

from agent.sketches import edges_hash as _edges_hash
from agent.sketches import js_distance, psi
from fleet.drift.importance import importance_weights, weighted_share
from fleet.ingest.aggregate import sum_histograms
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
    source: str = "payloads"      # "baseline": a manifest's reference (min_reference_samples applies)

    @classmethod
    def of(cls, features: Mapping[str, Mapping[str, Any]], prediction: Mapping[str, Any] | None,
           source: str = "payloads") -> Histograms:
        """From merged counts by feature name (fleet.rollouts.gates.CohortStats)."""
        names = sorted(features)
        return cls(names, [features[n].get("edges_hash") for n in names],
                   [np.asarray(features[n]["counts"], dtype=np.int64) for n in names],
                   None if not prediction else np.asarray(prediction["counts"], dtype=np.int64),
                   None if not prediction else prediction.get("kind"), 1, source=source)

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
    judged: list[str] = field(default_factory=list)   # features with enough samples on both sides

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


@dataclass(frozen=True)
class DriftParams:
    """Every knob of the engine. `DriftParams.of(settings)` gives the fleet's [drift] settings
    (console, alerts, retraining); rollout gates build theirs from the spec's limits."""

    psi_warn: float = 0.1
    psi_alert: float = 0.2
    js_warn: float | None = None
    js_alert: float | None = None
    min_samples: int = 1000             # fewer current samples: "insufficient", never an alarm
    min_reference_samples: int = 100    # a reference (baseline or control) with fewer is not trusted
    dataset_drift_share: float = 0.5    # dataset drift when this share (importance mass) of features drift
    top_features: int | None = None     # None: every feature of the reference
    eps: float = 1e-4                   # floor on a bin's proportion
    pseudo_count: float = 0.0           # added to every bin of both sides (0.5: Jeffreys, small samples)
    noise_quantile: float = 0.999       # never alarm below this quantile of PSI under no drift

    @classmethod
    def of(cls, settings: FleetSettings | DriftSettings | DriftParams | None) -> DriftParams:
        if isinstance(settings, DriftParams):
            return settings
        ds = DriftSettings() if settings is None else (
            settings.drift if isinstance(settings, FleetSettings) else settings)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in asdict(ds).items() if k in names})


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
        n_payloads=1, source="baseline",
    )


def merge_payloads(payloads: Sequence[Mapping[str, Any]], layout: Histograms | None = None) -> Histograms:
    """Add up the histograms of many payloads (fleet.ingest.aggregate.sum_histograms). With
    `layout`, payloads whose feature names or edge hashes differ from it are skipped (and counted)
    instead of silently mixed in."""
    want = None if layout is None else (tuple(layout.names), tuple(layout.hashes), tuple(len(c) for c in layout.counts))
    pred_size = None if layout is None else (0 if layout.prediction is None else len(layout.prediction))
    hs = sum_histograms(payloads, layout=want, prediction_size=pred_size)
    feats = hs.features or []
    if not feats and layout is not None:
        feats = [{"name": n, "edges_hash": h, "counts": [0] * len(c), "nan": 0}
                 for n, h, c in zip(layout.names, layout.hashes, layout.counts, strict=True)]
    pred = hs.prediction
    if pred is None and layout is not None and layout.prediction is not None:
        pred = {"kind": layout.prediction_kind, "counts": [0] * len(layout.prediction), "nan": 0}
    return Histograms([f["name"] for f in feats], [f.get("edges_hash") for f in feats],
                      [np.asarray(f["counts"], dtype=np.int64) for f in feats],
                      None if pred is None else np.asarray(pred["counts"], dtype=np.int64),
                      None if pred is None else pred.get("kind"), hs.added, hs.skipped,
                      [int(f.get("nan", 0)) for f in feats] if hs.added else None,
                      0 if pred is None else int(pred.get("nan", 0)))


def is_baseline(obj: Any) -> bool:
    """A manifest's drift_baseline (rather than a telemetry or aggregate payload)?"""
    return isinstance(obj, Mapping) and ("extractor" in obj or "n_samples" in obj or bool(
        obj.get("features") and "edges" in obj["features"][0]))


def _as_histograms(obj: Any, layout: Histograms | None = None) -> tuple[Histograms, str]:
    if isinstance(obj, Histograms):
        return obj, obj.source
    if isinstance(obj, Mapping):
        if is_baseline(obj):
            return from_baseline(obj), "baseline"
        return merge_payloads([obj], layout), "payloads"
    return merge_payloads(list(obj), layout), "payloads"


@lru_cache(maxsize=1024)
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


def psi_limit(configured: float, bins: int, n: int, m: int, quantile: float = 0.999) -> float:
    """Under no drift PSI ~ (1/n + 1/m) chi2(B-1): a limit never sits below that noise floor."""
    if n <= 0 or m <= 0:
        return configured
    return max(configured, chi2_quantile(quantile, bins - 1) * (1 / n + 1 / m))


def _level(psi_v: float, js_v: float, warn: float, alert: float, p: DriftParams) -> str:
    if psi_v >= alert or (p.js_alert is not None and js_v >= p.js_alert):
        return "alert"
    if psi_v >= warn or (p.js_warn is not None and js_v >= p.js_warn):
        return "warn"
    return "ok"


def feature_drift(name: str, ref: np.ndarray, cur: np.ndarray, p: DriftParams, sufficient: bool = True) -> FeatureDrift:
    """PSI and JS of one histogram pair with its level. PSI under no drift is about
    chi2(B-1) * (1/n + 1/m): the limits never sit below that noise floor."""
    n, m = int(cur.sum()), int(ref.sum())
    has_data = bool(n and m)
    psi_v = float(psi(ref + p.pseudo_count, cur + p.pseudo_count, p.eps)) if has_data else 0.0
    js_v = float(js_distance(ref, cur)) if has_data else 0.0
    warn = psi_limit(p.psi_warn, len(ref), n, m, p.noise_quantile)
    alert = psi_limit(p.psi_alert, len(ref), n, m, p.noise_quantile)
    judged = sufficient and n >= max(1, p.min_samples) and m >= max(1, p.min_reference_samples)
    level = _level(psi_v, js_v, warn, alert, p) if judged else "insufficient"
    return FeatureDrift(name, round(psi_v, 6), round(js_v, 6), n, m, level, round(warn, 6), round(alert, 6),
                        [int(x) for x in cur], [int(x) for x in ref])


def _aligned(cur: Histograms, ref: Histograms) -> list[np.ndarray | None]:
    """cur's counts in ref's feature order; None where cur lacks the feature on the same edges."""
    mine = {(n, h): c for n, h, c in zip(cur.names, cur.hashes, cur.counts, strict=True)}
    return [c if c is not None and len(c) == len(r) else None
            for c, r in ((mine.get((n, h)), r) for n, h, r in zip(ref.names, ref.hashes, ref.counts, strict=True))]


def compare(current: Any, reference: Any, settings: FleetSettings | DriftSettings | DriftParams | None = None,
            *, reference_label: str | None = None, importance: Mapping[str, float] | None = None) -> DriftReport:
    """Drift of `current` against `reference` (a drift_baseline or control payloads). Importance
    (`importance`, else the baseline's own) weights the drifted share (fleet/drift/importance.py)."""
    weights = importance_weights(reference if isinstance(reference, Mapping) else None, importance)
    p = DriftParams.of(settings)
    ref, kind = _as_histograms(reference)
    cur, _ = _as_histograms(current, layout=ref)
    if kind != "baseline":   # a baseline may hold a few hundred samples (the noise floor allows for it)
        p = replace(p, min_reference_samples=p.min_samples)   # a control cohort needs as many as the canary
    n_cur, n_ref = cur.n_samples, ref.n_samples
    sufficient = n_cur >= p.min_samples and n_ref >= p.min_reference_samples
    features = [feature_drift(name, r, c, p, sufficient) if c is not None else
                feature_drift(name, r, np.zeros_like(r), p, False)
                for name, r, c in zip(ref.names, ref.counts, _aligned(cur, ref), strict=True)]
    prediction = None
    if ref.prediction is not None and cur.prediction is not None and len(ref.prediction) == len(cur.prediction):
        prediction = feature_drift("prediction", ref.prediction, cur.prediction, p, sufficient)
    return _report(reference_label or kind, p, n_cur, n_ref, sufficient, features, prediction, cur, weights)


def _report(label: str, p: DriftParams, n_cur: int, n_ref: int, sufficient: bool, features: list[FeatureDrift],
            prediction: FeatureDrift | None, cur: Histograms, weights: Mapping[str, float] | None) -> DriftReport:
    top = features[: p.top_features] if p.top_features else features
    judged = [f for f in top if f.level != "insufficient"]
    drifted = [f.name for f in judged if f.level in ("warn", "alert")]
    ws = weighted_share(drifted, [f.name for f in judged], weights)
    ignored = set(ws.ignored) | ({f.name for f in top if ws.weights.get(f.name, 0.0) <= 0} if ws.weighted else set())
    dataset_drift = sufficient and bool(judged) and ws.share >= p.dataset_drift_share
    if not sufficient:
        level = "insufficient"
    elif dataset_drift or (prediction is not None and prediction.level == "alert"):
        level = "alert"
    elif ws.counted or (prediction is not None and prediction.level == "warn") or any(
            f.level == "alert" and f.name not in ignored for f in features):
        level = "warn"
    else:
        level = "ok"
    return DriftReport(label, level, sufficient, n_cur, n_ref, features, prediction, drifted,
                       round(ws.share, 4), dataset_drift, cur.n_payloads, cur.skipped, ws.weighted,
                       ws.count_share, ws.ignored, ws.weights, judged=[f.name for f in judged])


def judge(current: Any, references: Mapping[str, Any], params: DriftParams, *,
          importance: Mapping[str, float] | None = None) -> DriftVerdict:
    """Drift against several references at once: a feature drifted if it drifted against any
    reference it could be judged on; the share is over the features judged against at least one."""
    reports = {label: compare(current, ref, params, reference_label=label, importance=importance)
               for label, ref in references.items() if ref is not None}
    judged = sorted({n for r in reports.values() for n in r.judged})
    drifted = sorted({n for r in reports.values() for n in r.drifted_features})
    base = next((ref for ref in references.values() if is_baseline(ref)), None)
    ws = weighted_share(drifted, judged, importance_weights(base, importance))
    preds = {label: r.prediction for label, r in reports.items()
             if r.prediction is not None and r.prediction.level != "insufficient"}
    psis = [f.psi for r in reports.values() for f in r.features if f.level != "insufficient"]
    n_cur = max((r.n_current for r in reports.values()), default=0)
    return DriftVerdict(judged, drifted, round(ws.share, 4), ws.share >= params.dataset_drift_share and bool(judged),
                        max(psis) if psis else None, preds, reports, n_cur, ws)


@dataclass
class DriftVerdict:
    """What judge() decided: the features judged and drifted (over every reference), their share,
    the prediction drift per reference, and each reference's full report."""

    judged: list[str]
    drifted: list[str]
    share: float
    dataset_drift: bool
    worst_psi: float | None
    prediction: dict[str, FeatureDrift]
    reports: dict[str, DriftReport]
    n_current: int
    weighting: Any = None   # fleet.drift.importance.WeightedShare

    @property
    def prediction_breach(self) -> bool:
        return any(f.level == "alert" for f in self.prediction.values())

    def summary(self) -> str:
        """One line for people: what the console and the gate both show."""
        if not self.judged:
            return "no data" if not self.n_current else "insufficient data"
        return f"{len(self.drifted)} / {len(self.judged)} features drifted ({self.share:.0%})"


def worst(levels: Iterable[str]) -> str:
    return max(levels, key=LEVELS.index, default="ok")
