"""Judgements on online quality, shared by rollout gates, alerts and the console.

* concept drift: online accuracy significantly below the build-time eval (the manifest's
  metrics) or below the control cohort, by more than `margin`, once `min_labelled` labels exist;
* slice gap (online fairness): the worst-slice gap over the build-time gap by more than
  `max_increase` (or above an absolute `max_gap`), judged on slices with `min_slice_count` labels.

Each verdict is "pass", "fail" or "wait" (not enough labels), with the numbers behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.analytics.quality import OnlineQuality
from fleet.analytics.stats import below_control, below_reference

PASS, FAIL, WAIT = "pass", "fail", "wait"


@dataclass
class Verdict:
    status: str
    value: float | None = None
    reference: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "value": self.value, "reference": self.reference, **self.detail}


def build_accuracy(manifest: Mapping[str, Any] | None) -> float | None:
    """The build-time accuracy from a manifest's metrics (compiler.evaluate: metric_name/metric)."""
    m = (manifest or {}).get("metrics") or {}
    if m.get("task", "classification") != "classification":
        return None
    for key in ("accuracy", "online_reference_accuracy"):
        if isinstance(m.get(key), (int, float)):
            return float(m[key])
    if m.get("metric_name") in ("accuracy", "top1") and isinstance(m.get("metric"), (int, float)):
        return float(m["metric"])
    return None


def build_slice_gap(manifest: Mapping[str, Any] | None) -> float | None:
    m = (manifest or {}).get("metrics") or {}
    return float(m["slice_gap"]) if isinstance(m.get("slice_gap"), (int, float)) else None


def concept_drift(q: OnlineQuality, *, reference: float | None = None, control: OnlineQuality | None = None,
                  min_labelled: int = 200, margin: float = 0.02, alpha: float = 0.01) -> Verdict:
    """Fail when online accuracy is significantly (one-sided, `alpha`) more than `margin` below the
    control cohort (when it has `min_labelled` labels) or else the build-time `reference`."""
    n, k = q.labelled, q.correct
    acc = k / n if n else None
    detail: dict[str, Any] = {"labelled": n, "min_labelled": min_labelled, "margin": margin, "alpha": alpha}
    if q.kind != "class" or n < max(1, min_labelled):
        return Verdict(WAIT, None if acc is None else round(acc, 6), reference, detail)
    if control is not None and control.labelled >= max(1, min_labelled):
        c_n, c_k = control.labelled, control.correct
        t = below_control(k, n, c_k, c_n, margin, alpha)
        detail.update(against="control", control_labelled=c_n, z=t.statistic, p_value=round(t.p_value, 6))
        return Verdict(FAIL if t.significant else PASS, round(acc, 6), round(c_k / c_n, 6), detail)
    if reference is None:
        detail["against"] = None
        return Verdict(PASS, round(acc, 6), None, detail)
    t = below_reference(k, n, reference, margin, alpha)
    detail.update(against="build", z=t.statistic, p_value=round(t.p_value, 6))
    return Verdict(FAIL if t.significant else PASS, round(acc, 6), reference, detail)


def slice_gap(q: OnlineQuality, *, build_gap: float | None = None, max_increase: float = 0.05,
              max_gap: float = 1.0, min_slice_count: int = 30) -> Verdict:
    """Fail when the worst-slice gap is significant (intervals apart) and exceeds the build-time
    gap by more than `max_increase`, or exceeds `max_gap` outright."""
    g = q.worst_slice_gap(min_slice_count)
    detail: dict[str, Any] = {"min_slice_count": min_slice_count, "max_increase": max_increase, "max_gap": max_gap}
    if g is None:
        return Verdict(WAIT, None, build_gap, detail)
    detail.update(g)
    over = g["gap"] - (build_gap or 0.0) > max_increase or g["gap"] > max_gap
    return Verdict(FAIL if over and g["significant"] else PASS, g["gap"], build_gap, detail)


def low_confidence_spike(current: OnlineQuality, reference: OnlineQuality, *, min_predictions: int = 200,
                         max_increase: float = 0.1, alpha: float = 0.01) -> Verdict:
    """Low-confidence rate up by more than `max_increase` over the reference period (one-sided test)."""
    n, n0 = int(current.confidence.sum()), int(reference.confidence.sum())
    detail: dict[str, Any] = {"predictions": n, "reference_predictions": n0}
    if n < min_predictions or n0 < min_predictions:
        return Verdict(WAIT, current.low_confidence_rate(), reference.low_confidence_rate(), detail)
    # "rate up" == "share of confident predictions down": reuse the one-sided two-proportion test
    t = below_control(n - current.low_confidence, n, n0 - reference.low_confidence, n0, max_increase, alpha)
    detail.update(z=t.statistic, p_value=round(t.p_value, 6))
    return Verdict(FAIL if t.significant else PASS, current.low_confidence_rate(),
                   reference.low_confidence_rate(), detail)
