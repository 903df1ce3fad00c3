"""Alerts from online quality (issue 14): concept drift, slice gap and low-confidence spikes, stored
as DriftAlert rows beside the input-drift alerts (references "concept", "slice_gap",
"low_confidence"), so /api/alerts, the console, acknowledgement and the retraining trigger
(fleet.drift.retraining: persistent "concept" alerts open a request; a human approves) treat them alike.

Judged per model version over the lookback, at most once per hour bucket (the alert key's
window_start); thresholds are the engine's defaults below.
"""

from __future__ import annotations

import time
from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.analytics.engine import manifest_of, version_quality
from fleet.analytics.verdicts import (
    FAIL,
    Verdict,
    build_accuracy,
    build_slice_gap,
    concept_drift,
    low_confidence_spike,
    slice_gap,
)
from fleet.models import DriftAlert, TelemetryWindow

BUCKET_S = 3600.0
LOOKBACK_S = 6 * 3600.0
REFERENCE_S = 24 * 3600.0       # low-confidence rate of the day before is the reference
MIN_LABELLED = 200
ACCURACY_MARGIN = 0.02
ALPHA = 0.01
MAX_SLICE_GAP_INCREASE = 0.05
MAX_LOW_CONFIDENCE_INCREASE = 0.1


def _versions(db: Session, since: float) -> list[tuple[str, int]]:
    rows = db.exec(select(TelemetryWindow.model_name, TelemetryWindow.model_version)
                   .where(TelemetryWindow.window_end >= since, TelemetryWindow.role != "shadow").distinct())
    return sorted({(str(n), int(v)) for n, v in rows})


def evaluate_quality(db: Session, *, now: float | None = None, lookback_s: float = LOOKBACK_S,
                     actor: str = "quality-evaluator") -> list[DriftAlert]:
    now = time.time() if now is None else now
    since = now - lookback_s
    bucket = float(int(now // BUCKET_S) * BUCKET_S)
    new: list[DriftAlert] = []
    for name, version in _versions(db, since):
        manifest = manifest_of(db, name, version)
        q = version_quality(db, name, version, since=since)
        checks: list[tuple[str, str, Verdict]] = [
            ("concept", "alert", concept_drift(q, reference=build_accuracy(manifest), min_labelled=MIN_LABELLED,
                                               margin=ACCURACY_MARGIN, alpha=ALPHA)),
            ("slice_gap", "alert", slice_gap(q, build_gap=build_slice_gap(manifest),
                                             max_increase=MAX_SLICE_GAP_INCREASE)),
        ]
        before = version_quality(db, name, version, since=since - REFERENCE_S, include_joined=False)
        checks.append(("low_confidence", "warn", low_confidence_spike(q, before,
                                                                      max_increase=MAX_LOW_CONFIDENCE_INCREASE,
                                                                      alpha=ALPHA)))
        for reference, level, v in checks:
            if v.status != FAIL:
                continue
            exists = db.exec(select(DriftAlert.id).where(
                DriftAlert.model_name == name, DriftAlert.model_version == version, DriftAlert.cohort == "",
                DriftAlert.window_start == bucket, DriftAlert.reference == reference)).first()
            if exists is not None:
                continue
            alert = DriftAlert(model_name=name, model_version=version, cohort="", window_start=bucket,
                               window_end=now, reference=reference, level=level, summary=_summary(reference, v),
                               evidence={"verdict": v.to_dict(), "quality": q.to_dict()})
            db.add(alert)
            db.flush()
            audit.record(db, actor, "alert.raise", f"alert:{alert.id}", None,
                         {"model": name, "version": version, "level": level, "reference": reference})
            new.append(alert)
    return new


def _summary(reference: str, v: Verdict) -> str:
    d: dict[str, Any] = v.detail
    if reference == "concept":
        return (f"{v.status}: online accuracy {v.value} vs {d.get('against')} {v.reference} "
                f"({d.get('labelled')} labels, p={d.get('p_value')})")
    if reference == "slice_gap":
        return f"worst-slice gap {v.value} ({d.get('worst')} vs {d.get('best')}), build-time gap {v.reference}"
    return f"low-confidence rate {v.value} vs {v.reference} the day before"
