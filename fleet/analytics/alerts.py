"""Alerts from online quality (issue 14): concept drift, slice gap and low-confidence spikes, stored
as DriftAlert rows beside the input-drift alerts (references "concept", "slice_gap",
"low_confidence"), so /api/alerts, the console, acknowledgement and the retraining trigger
(fleet.drift.retraining: persistent "concept" alerts open a request; a human approves) treat them alike.

Judged per model version over the lookback, at most once per hour bucket (the alert key's
window_start); the thresholds are fleet settings, `[fleet.analytics]` (fleet.settings.AnalyticsSettings,
EDGEFLEET_ANALYTICS_* in the environment).
"""

from __future__ import annotations

import time
from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.analytics.engine import manifest_of, version_quality
from fleet.analytics.quality import OnlineQuality
from fleet.analytics.verdicts import (
    FAIL,
    Verdict,
    build_accuracy,
    build_slice_gap,
    concept_drift,
    low_confidence_spike,
    slice_gap,
)
from fleet.models import DeviceVersionWindows, DriftAlert
from fleet.settings import AnalyticsSettings


def _versions(db: Session, since: float) -> list[tuple[str, int]]:
    """Versions that served (not shadow) since then, from ingest's per-device window counts
    (never the raw windows, which retention drops and which grow with the fleet)."""
    W = DeviceVersionWindows
    rows = db.exec(select(W.model_name, W.model_version).where(W.last_end >= since, W.role != "shadow").distinct())
    return sorted({(str(n), int(v)) for n, v in rows})


def evaluate_quality(db: Session, settings: AnalyticsSettings | None = None, *, now: float | None = None,
                     lookback_s: float | None = None, actor: str = "quality-evaluator") -> list[DriftAlert]:
    """Raise the quality alerts of every version that reported within the lookback."""
    s = settings or AnalyticsSettings()
    now = time.time() if now is None else now
    since = now - (s.lookback_s if lookback_s is None else lookback_s)
    bucket = float(int(now // s.bucket_s) * s.bucket_s)
    new: list[DriftAlert] = []
    for name, version in _versions(db, since):
        q = version_quality(db, name, version, since=since)
        for reference, level, v in _checks(db, s, q, name, version, since):
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


def _checks(db: Session, s: AnalyticsSettings, q: OnlineQuality, name: str, version: int,
            since: float) -> list[tuple[str, str, Verdict]]:
    """(alert reference, level, verdict) of one version `q`: the table of quality alerts."""
    manifest = manifest_of(db, name, version)
    before = version_quality(db, name, version, since=since - s.reference_s, include_joined=False)
    return [
        ("concept", "alert", concept_drift(q, reference=build_accuracy(manifest), min_labelled=s.min_labelled,
                                           margin=s.accuracy_margin, alpha=s.alpha)),
        ("slice_gap", "alert", slice_gap(q, build_gap=build_slice_gap(manifest),
                                         max_increase=s.max_slice_gap_increase)),
        ("low_confidence", "warn", low_confidence_spike(q, before, max_increase=s.max_low_confidence_increase,
                                                        alpha=s.alpha)),
    ]


def _summary(reference: str, v: Verdict) -> str:
    d: dict[str, Any] = v.detail
    if reference == "concept":
        return (f"{v.status}: online accuracy {v.value} vs {d.get('against')} {v.reference} "
                f"({d.get('labelled')} labels, p={d.get('p_value')})")
    if reference == "slice_gap":
        return f"worst-slice gap {v.value} ({d.get('worst')} vs {d.get('best')}), build-time gap {v.reference}"
    return f"low-confidence rate {v.value} vs {v.reference} the day before"
