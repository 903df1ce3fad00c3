"""Retraining triggers with human approval.

Drift that persists (baseline alerts in several windows, across a good share of the cohorts that
run the version) opens one retraining request per model version. Nothing runs until an operator
approves it; approval calls the configured webhook (your training pipeline) with the evidence, and
the new model then comes back through `compile` and a gated rollout like any other.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.models import Aggregate, DriftAlert, RetrainingRequest, now
from fleet.settings import FleetSettings, RetrainSettings

log = logging.getLogger(__name__)
LIVE = ("open", "triggered")  # a version with one of these gets no second request


class RetrainingError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def check(db: Session, settings: FleetSettings, at: float | None = None,
          actor: str = "drift-evaluator") -> list[RetrainingRequest]:
    """Open a request for every version whose baseline alerts meet the thresholds."""
    rs: RetrainSettings = settings.retrain
    since = (at or now()) - rs.lookback_s
    by_version: dict[tuple[str, int], list[DriftAlert]] = {}
    for a in db.exec(select(DriftAlert).where(DriftAlert.reference.in_(("baseline", "concept")),  # type: ignore[attr-defined]
                                              DriftAlert.level == "alert",
                                              DriftAlert.window_start >= since)):
        by_version.setdefault((a.model_name, a.model_version), []).append(a)
    opened = []
    for (name, version), rows in sorted(by_version.items()):
        windows = sorted({a.window_start for a in rows})
        alerting = sorted({a.cohort for a in rows})
        reporting = set(db.exec(select(Aggregate.cohort).where(
            Aggregate.model_name == name, Aggregate.model_version == version, Aggregate.role == "active",
            Aggregate.window_start >= since).distinct()).all()) | set(alerting)
        share = len(alerting) / max(1, len(reporting))
        if any(a.reference == "concept" for a in rows):
            share = 1.0   # concept drift is judged fleet-wide on labelled outcomes (fleet.analytics.alerts)
        if len(windows) < rs.min_alert_windows or share < rs.min_cohort_share:
            continue
        live = db.exec(select(RetrainingRequest.id).where(
            RetrainingRequest.model_name == name, RetrainingRequest.model_version == version,
            RetrainingRequest.status.in_(LIVE))).first()  # type: ignore[attr-defined]
        if live is not None:
            continue
        req = RetrainingRequest(
            model_name=name, model_version=version,
            summary=(f"{name} v{version}: drift alerts in {len(windows)} windows and "
                     f"{len(alerting)}/{len(reporting)} cohorts within {rs.lookback_s / 3600:g} h"),
            evidence={"alert_ids": sorted(a.id for a in rows if a.id is not None), "windows": windows,
                      "cohorts_alerting": alerting, "cohorts_reporting": sorted(reporting),
                      "summaries": [a.summary for a in sorted(rows, key=lambda a: -a.window_start)[:5]]})
        db.add(req)
        db.flush()
        audit.record(db, actor, "retraining.request", f"retraining:{req.id}", None,
                     {"model": name, "version": version, "summary": req.summary})
        opened.append(req)
    return opened


def _call_webhook(rs: RetrainSettings, req: RetrainingRequest) -> dict[str, Any]:
    body = json.dumps({"event": "edgefleet.retraining.approved", "request_id": req.id, "model": req.model_name,
                       "version": req.model_version, "summary": req.summary, "approved_by": req.decided_by,
                       "note": req.note, "evidence": req.evidence}).encode()
    headers = {"Content-Type": "application/json"}
    if rs.webhook_token:
        headers["Authorization"] = f"Bearer {rs.webhook_token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(rs.webhook_url, data=body, headers=headers,
                                                           method="POST"), timeout=rs.webhook_timeout_s) as resp:
            return {"ok": 200 <= resp.status < 300, "status": resp.status,
                    "body": resp.read(2000).decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"ok": False, "status": exc.code, "error": str(exc.reason)}
    except (urllib.error.URLError, OSError) as exc:
        return {"ok": False, "status": None, "error": str(getattr(exc, "reason", exc))}


def decide(db: Session, settings: FleetSettings, request_id: int, actor: str, *, approve: bool,
           note: str = "") -> RetrainingRequest:
    """Approve (and trigger the pipeline) or dismiss an open request; both are audited."""
    req = db.get(RetrainingRequest, request_id)
    if req is None:
        raise RetrainingError(404, "not-found", f"no retraining request {request_id}")
    if req.status != "open" and not (approve and req.status == "trigger-failed"):
        raise RetrainingError(409, "not-open", f"retraining request {request_id} is {req.status}")
    before = {"status": req.status}
    req.decided_by, req.decided_at, req.note = actor, now(), note
    if not approve:
        req.status = "dismissed"
    elif not settings.retrain.webhook_url:
        req.status = "triggered"
        req.trigger_result = {"ok": True, "status": None, "body": "no webhook configured: start retraining by hand"}
    else:
        req.trigger_result = _call_webhook(settings.retrain, req)
        req.status = "triggered" if req.trigger_result["ok"] else "trigger-failed"
    db.add(req)
    audit.record(db, actor, "retraining.approve" if approve else "retraining.dismiss", f"retraining:{req.id}",
                 before, {"status": req.status, "note": note, "trigger": req.trigger_result})
    return req


def request_view(r: RetrainingRequest) -> dict[str, Any]:
    return {"id": r.id, "created_at": r.created_at, "model": r.model_name, "version": r.model_version,
            "status": r.status, "summary": r.summary, "evidence": r.evidence, "decided_by": r.decided_by,
            "decided_at": r.decided_at, "note": r.note, "trigger_result": r.trigger_result}
