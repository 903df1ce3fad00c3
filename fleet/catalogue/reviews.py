"""Scheduled model reviews (issue 16): each model is reviewed every `review_interval_days`
(its owner's setting, default 90). A review records who, when, the decision (keep, retrain,
retire) and notes; `retire` with a version retires it (fleet.catalogue.lifecycle). A model whose next
review date has passed is overdue: listed by the API, counted by the Prometheus gauge
`edgefleet_model_reviews_overdue` (alert on > 0), audited and raised as an open alert
(/api/alerts) once per missed due date; the next recorded review closes that alert."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from sqlmodel import Session, func, select

from fleet import audit
from fleet.catalogue import lifecycle
from fleet.drift import alerts
from fleet.models import AuditEntry, ModelOwner, ModelReview, ModelVersion

log = logging.getLogger(__name__)
DECISIONS = ("keep", "retrain", "retire")
DEFAULT_INTERVAL_DAYS = 90
DAY = 86400.0
REVIEWS_OVERDUE = Gauge("edgefleet_model_reviews_overdue", "Models whose scheduled review date has passed")


@dataclass
class ReviewState:
    name: str
    interval_days: int
    last_review_at: float | None
    due_at: float
    overdue: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "interval_days": self.interval_days, "last_review_at": self.last_review_at,
                "due_at": self.due_at, "overdue": self.overdue}


def review_view(r: ModelReview) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "version": r.version, "reviewer": r.reviewer, "at": r.at,
            "decision": r.decision, "notes": r.notes}


def record_review(db: Session, name: str, decision: str, notes: str, actor: str, version: int | None = None,
                  at: float | None = None) -> ModelReview:
    if decision not in DECISIONS:
        raise lifecycle.LifecycleError(400, "bad-decision", f"decision must be one of {', '.join(DECISIONS)}")
    if db.exec(select(ModelVersion.id).where(ModelVersion.name == name)).first() is None:
        raise lifecycle.LifecycleError(404, "not-found", f"no model {name!r}")
    if decision == "retire" and version is None:
        raise lifecycle.LifecycleError(400, "version-required", "a 'retire' decision names the version to retire")
    r = ModelReview(name=name, version=version, reviewer=actor, decision=decision, notes=notes.strip(),
                    at=time.time() if at is None else at)
    db.add(r)
    db.flush()
    audit.record(db, actor, "model.review", f"model:{name}", None, review_view(r))
    alerts.close_review_alerts(db, name, actor)
    if decision == "retire" and version is not None and lifecycle.status_name(db, name, version) != "retired":
        lifecycle.set_status(db, name, version, "retired", f"review {r.id}: {notes.strip() or 'retire'}", actor)
    return r


def state_of(db: Session, name: str, at: float | None = None,
             default_days: int = DEFAULT_INTERVAL_DAYS) -> ReviewState:
    """Due = the last review (else the first upload) + the interval (the owner's, else the default)."""
    at = time.time() if at is None else at
    owner = db.get(ModelOwner, name)
    days = owner.review_interval_days if owner is not None else default_days
    last = db.exec(select(func.max(ModelReview.at)).where(ModelReview.name == name)).one()
    since = last if last is not None else db.exec(select(func.min(ModelVersion.created_at))
                                                  .where(ModelVersion.name == name)).one()
    due = float(since or at) + days * DAY
    return ReviewState(name, days, last, due, due <= at)


def states(db: Session, at: float | None = None, default_days: int = DEFAULT_INTERVAL_DAYS) -> list[ReviewState]:
    names = sorted(set(db.exec(select(ModelVersion.name)).all()))
    return [state_of(db, n, at, default_days) for n in names]


def check_overdue(db: Session, at: float | None = None,
                  default_days: int = DEFAULT_INTERVAL_DAYS) -> list[ReviewState]:
    """The scheduled check: set the gauge, and raise (log + audit) each newly missed due date once."""
    overdue = [s for s in states(db, at, default_days) if s.overdue]
    REVIEWS_OVERDUE.set(len(overdue))
    for s in overdue:
        target = f"model:{s.name}"
        seen = db.exec(select(AuditEntry.after).where(AuditEntry.action == "model.review-overdue",
                                                      AuditEntry.target == target)
                       .order_by(AuditEntry.id.desc())).first()
        if isinstance(seen, dict) and seen.get("due_at") == s.due_at:
            continue
        log.warning("model review overdue", extra={"model": s.name, "due_at": s.due_at})
        audit.record(db, "review-scheduler", "model.review-overdue", target, None, s.to_dict())
        latest = db.exec(select(func.max(ModelVersion.version)).where(ModelVersion.name == s.name)).one()
        alerts.raise_review_alert(db, s.name, int(latest or 0), s.due_at, s.interval_days)
    return overdue


def history(db: Session, name: str, limit: int = 200) -> list[dict[str, Any]]:
    """A model's lifecycle history, newest first: uploads, owner changes, status changes,
    reviews, decommissions (the audit entries about the model and its versions)."""
    rows = db.exec(select(AuditEntry).where((AuditEntry.target == f"model:{name}")
                                            | AuditEntry.target.startswith(f"model:{name}:", autoescape=True))
                   .order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)).all()
    return [{"at": a.at, "actor": a.actor, "action": a.action, "target": a.target, "before": a.before,
             "after": a.after} for a in rows]
