"""Drift over the stored aggregates: reports per version/cohort/window, and alerts with evidence."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.drift.engine import DriftParams, DriftReport, compare
from fleet.models import Aggregate, DriftAlert, ModelVersion, now
from fleet.settings import FleetSettings


class NoReference(Exception):
    """No baseline in the manifest, or no control data in the window."""


def baseline_for(db: Session, name: str, version: int) -> dict[str, Any] | None:
    for mv in db.exec(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)):
        if (mv.manifest or {}).get("drift_baseline"):
            return mv.manifest["drift_baseline"]
    return None


def aggregates(db: Session, name: str, version: int, *, role: str = "active", cohort: str | None = None,
               device_class: str | None = None, since: float | None = None, until: float | None = None,
               window_start: float | None = None) -> list[Aggregate]:
    q = select(Aggregate).where(Aggregate.model_name == name, Aggregate.model_version == version,
                                Aggregate.role == role)
    if cohort:
        q = q.where(Aggregate.cohort == cohort)
    if device_class:
        q = q.where(Aggregate.device_class == device_class)
    if window_start is not None:
        q = q.where(Aggregate.window_start == window_start)
    if since is not None:
        q = q.where(Aggregate.window_start >= since)
    if until is not None:
        q = q.where(Aggregate.window_start < until)
    return list(db.exec(q.order_by(Aggregate.window_start)))


def control_version(db: Session, name: str, version: int) -> int | None:
    """The previous version that has telemetry (the control cohort)."""
    row = db.exec(select(Aggregate.model_version).where(Aggregate.model_name == name,
                                                        Aggregate.model_version < version)
                  .order_by(Aggregate.model_version.desc()).limit(1)).first()
    return None if row is None else int(row)


def fleet_drift(db: Session, settings: FleetSettings | DriftParams, name: str, version: int, *, reference: str = "baseline",
                role: str = "active", cohort: str | None = None, device_class: str | None = None,
                since: float | None = None, until: float | None = None,
                window_start: float | None = None) -> DriftReport:
    """Drift of (name, version) over the selected windows against the baseline or the control."""
    current = aggregates(db, name, version, role=role, cohort=cohort, device_class=device_class, since=since,
                         until=until, window_start=window_start)
    if reference == "baseline":
        base = baseline_for(db, name, version)
        if base is None:
            raise NoReference(f"{name} v{version} has no drift_baseline in its manifest")
        return compare([a.payload for a in current], base, settings, reference_label="baseline")
    ctrl_v = control_version(db, name, version)
    if ctrl_v is None:
        raise NoReference(f"no earlier version of {name} has telemetry")
    windows = sorted({a.window_start for a in current})
    control = [a for w in windows for a in aggregates(db, name, ctrl_v, cohort=cohort, device_class=device_class,
                                                      window_start=w)]
    if not control:
        raise NoReference(f"v{ctrl_v} has no telemetry in the same windows")
    return compare([a.payload for a in current], [a.payload for a in control], settings,
                   reference_label=f"control:v{ctrl_v}",
                   importance=(baseline_for(db, name, version) or {}).get("importance"))  # issue 15


def evaluate(db: Session, settings: FleetSettings, *, since: float | None = None,
             actor: str = "drift-evaluator") -> list[DriftAlert]:
    """Check every (version, cohort, window) since `since` against baseline and control; store
    an alert (with its evidence) for each warn/alert result not stored before."""
    q = select(Aggregate).where(Aggregate.role == "active")
    if since is not None:
        q = q.where(Aggregate.window_start >= since)
    groups: dict[tuple[str, int, str, float], list[Aggregate]] = defaultdict(list)
    for a in db.exec(q):
        groups[(a.model_name, a.model_version, a.cohort, a.window_start)].append(a)
    new: list[DriftAlert] = []
    for (name, version, cohort, ws), rows in sorted(groups.items()):
        for ref in ("baseline", "control"):
            try:
                rep = fleet_drift(db, settings, name, version, reference=ref, cohort=cohort, window_start=ws)
            except NoReference:
                continue
            if rep.level not in ("warn", "alert"):
                continue
            exists = db.exec(select(DriftAlert.id).where(
                DriftAlert.model_name == name, DriftAlert.model_version == version, DriftAlert.cohort == cohort,
                DriftAlert.window_start == ws, DriftAlert.reference == rep.reference)).first()
            if exists is not None:
                continue
            top = sorted(rep.features, key=lambda f: -f.psi)[:3]
            summary = (f"{rep.level}: {len(rep.drifted_features)}/{len(rep.judged)} features drifted vs "
                       f"{rep.reference}; top " + ", ".join(f"{f.name} PSI {f.psi:.3f}" for f in top))
            if rep.prediction is not None:
                summary += f"; prediction PSI {rep.prediction.psi:.3f}"
            alert = DriftAlert(model_name=name, model_version=version, device_class=rows[0].device_class,
                               cohort=cohort, window_start=ws, window_end=ws + rows[0].window_seconds,
                               reference=rep.reference, level=rep.level, summary=summary,
                               evidence=rep.to_dict())
            db.add(alert)
            db.flush()
            audit.record(db, actor, "alert.raise", f"alert:{alert.id}", None,
                         {"model": name, "version": version, "cohort": cohort, "level": rep.level,
                          "reference": rep.reference})
            new.append(alert)
    from fleet.analytics.alerts import evaluate_quality  # concept drift, slice gap, low confidence (issue 14)

    new.extend(evaluate_quality(db, settings.analytics))
    return new


def raise_rollout_alert(db: Session, rollout: Any, reason: dict[str, Any], actor: str = "rollout-evaluator",
                        state: str = "paused") -> DriftAlert:
    """A paused (or blind, state "waiting") rollout is something wrong: store it as an open alert
    (reference "rollout:<id>") beside the drift alerts, so the overview, /api/alerts and
    acknowledgement treat it alike."""
    at = float(reason.get("at") or now())
    alert = DriftAlert(model_name=rollout.model_name, model_version=rollout.version,
                       cohort=f"wave:{reason.get('wave_name', reason.get('wave', ''))}", window_start=at,
                       window_end=at, reference=f"rollout:{rollout.id}", level="alert",
                       summary=f"rollout {rollout.id} {state}: {reason.get('summary') or reason.get('kind', '')}",
                       evidence={"rollout": rollout.id, "gates": reason.get("gates", []),
                                 "failed_devices": reason.get("failed_devices", []),
                                 **({"waiting": reason["waiting"]} if reason.get("waiting") else {})})
    db.add(alert)
    db.flush()
    audit.record(db, actor, "alert.raise", f"alert:{alert.id}", None,
                 {"model": rollout.model_name, "version": rollout.version, "rollout": rollout.id, "level": "alert"})
    return alert


def pause_reason(rollout: Any) -> dict[str, Any]:
    """The alert's reason for a pause the evaluator did not cause (operator pause, version rollback)."""
    reason = dict(rollout.reason or {})
    if not reason.get("summary"):
        why = reason.get("why") or reason.get("kind", "paused")
        reason["summary"] = f"{reason.get('kind', 'paused')} by {reason.get('by', '?')}: {why}"
    return reason


def close_rollout_alerts(db: Session, rollout_id: int, actor: str, why: str) -> int:
    """The rollout left "paused" (resumed, aborted, rolled back, completed): its open pause
    alerts are resolved, so the overview stops counting them. Returns how many were closed."""
    n = 0
    for alert in db.exec(select(DriftAlert).where(DriftAlert.reference == f"rollout:{rollout_id}",
                                                  DriftAlert.status == "open")).all():
        alert.status, alert.acknowledged_at, alert.acknowledged_by = "resolved", now(), actor
        db.add(alert)
        audit.record(db, actor, "alert.resolve", f"alert:{alert.id}", {"status": "open"},
                     {"status": "resolved", "why": why})
        n += 1
    return n


def raise_review_alert(db: Session, name: str, version: int, due_at: float, interval_days: int,
                       actor: str = "review-scheduler") -> DriftAlert:
    """An overdue model review (issue 16) is an open alert (reference "review:<name>", one per
    missed due date) beside the drift alerts; recording a review closes it (close_review_alerts)."""
    alert = DriftAlert(model_name=name, model_version=version, cohort="review", window_start=due_at,
                       window_end=due_at, reference=f"review:{name}", level="warn",
                       summary=f"review of {name} overdue since {time.strftime('%Y-%m-%d', time.gmtime(due_at))}"
                               f" (every {interval_days} days): record one with `edgefleet models review`",
                       evidence={"due_at": due_at, "interval_days": interval_days})
    db.add(alert)
    db.flush()
    audit.record(db, actor, "alert.raise", f"alert:{alert.id}", None,
                 {"model": name, "version": version, "reference": alert.reference, "level": "warn"})
    return alert


def close_review_alerts(db: Session, name: str, actor: str) -> list[DriftAlert]:
    """A recorded review resolves the model's open overdue-review alerts."""
    rows = db.exec(select(DriftAlert).where(DriftAlert.reference == f"review:{name}",
                                            DriftAlert.status == "open")).all()
    return [a for a in (resolve(db, r.id, actor) for r in rows if r.id is not None) if a is not None]


def acknowledge(db: Session, alert_id: int, actor: str) -> DriftAlert | None:
    alert = db.get(DriftAlert, alert_id)
    if alert is None:
        return None
    before = {"status": alert.status}
    alert.status, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", now(), actor
    db.add(alert)
    audit.record(db, actor, "alert.acknowledge", f"alert:{alert_id}", before, {"status": alert.status})
    return alert


def resolve(db: Session, alert_id: int, actor: str) -> DriftAlert | None:
    """The condition behind an open alert ended by itself (a blind fleet sees again): close it
    as "resolved", so the open alerts list only what still needs someone."""
    alert = db.get(DriftAlert, alert_id)
    if alert is None or alert.status != "open":
        return None
    alert.status, alert.acknowledged_at, alert.acknowledged_by = "resolved", now(), actor
    alert.window_end = alert.acknowledged_at
    db.add(alert)
    audit.record(db, actor, "alert.resolve", f"alert:{alert_id}", {"status": "open"}, {"status": alert.status})
    return alert


def alert_view(a: DriftAlert, with_evidence: bool = False) -> dict[str, Any]:
    d = {"id": a.id, "created_at": a.created_at, "model": a.model_name, "version": a.model_version,
         "device_class": a.device_class, "cohort": a.cohort, "window_start": a.window_start,
         "window_end": a.window_end, "reference": a.reference, "level": a.level, "summary": a.summary,
         "status": a.status, "acknowledged_at": a.acknowledged_at, "acknowledged_by": a.acknowledged_by}
    if with_evidence:
        d["evidence"] = a.evidence
    return d
