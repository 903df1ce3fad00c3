"""Online quality of a model version from the database: device-reported outcomes and confidence
in the telemetry ingest merged (aggregates) plus labels joined at the backend; judged against the build-time eval.
What the console, alerts and the REST API show (gates use the same OnlineQuality and verdicts
on the wave's cohorts, fleet.rollouts.gates)."""

from __future__ import annotations

import time
from typing import Any

from sqlmodel import Session, select

from fleet.analytics.join import joined_quality, sync_records
from fleet.analytics.quality import OnlineQuality
from fleet.analytics.verdicts import build_accuracy, build_slice_gap, concept_drift, slice_gap
from fleet.models import Aggregate, ModelVersion


def manifest_of(session: Session, model: str, version: int) -> dict[str, Any]:
    mv = session.exec(select(ModelVersion).where(ModelVersion.name == model,
                                                 ModelVersion.version == int(version))).first()
    return dict(mv.manifest or {}) if mv is not None else {}


def version_quality(session: Session, model: str, version: int, *, since: float | None = None,
                    cohort: str | None = None, device_class: str | None = None,
                    include_joined: bool = True) -> OnlineQuality:
    """Outcomes and confidence of served predictions (roles active and ab; shadow runs have no
    labels), from the windows ingest merged (Aggregate rows whose slot ends after `since`)."""
    stmt = select(Aggregate.payload).where(Aggregate.model_name == model, Aggregate.model_version == int(version),
                                           Aggregate.role != "shadow")
    if since is not None:
        stmt = stmt.where(Aggregate.window_start + Aggregate.window_seconds > since)
    if cohort is not None:
        stmt = stmt.where(Aggregate.cohort == cohort)
    if device_class is not None:
        stmt = stmt.where(Aggregate.device_class == device_class)
    q = OnlineQuality()
    for payload in session.exec(stmt):
        q.add_payload(payload or {})
    if include_joined:
        sync_records(session)
        mon = manifest_of(session, model, version).get("monitoring") or {}
        joined_quality(session, model, version, n_classes=mon.get("n_classes"), cohort=cohort,
                       device_class=device_class, q=q)
    return q


def version_report(session: Session, model: str, version: int, *, since: float | None = None,
                   min_labelled: int = 200, margin: float = 0.02, alpha: float = 0.01,
                   max_gap_increase: float = 0.05, min_slice_count: int = 30) -> dict[str, Any]:
    """Everything one screen needs: quality, concept drift against the build-time eval, online
    fairness against the build-time slice gap, the label-free estimate (marked as such)."""
    manifest = manifest_of(session, model, version)
    q = version_quality(session, model, version, since=since)
    ref = build_accuracy(manifest)
    return {"model": model, "version": int(version), "computed_at": round(time.time(), 3),
            "quality": q.to_dict(min_slice_count=1),
            "build": {"accuracy": ref, "slice_gap": build_slice_gap(manifest)},
            "concept_drift": concept_drift(q, reference=ref, min_labelled=min_labelled, margin=margin,
                                           alpha=alpha).to_dict(),
            "slice_gap": slice_gap(q, build_gap=build_slice_gap(manifest), max_increase=max_gap_increase,
                                   min_slice_count=min_slice_count).to_dict()}
